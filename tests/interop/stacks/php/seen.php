<?php
// GET /seen.php: what reached token.php (for the tests).
require __DIR__ . '/common.php';
json_out(200, seen_load());
