<?php
// GET /echo.php: the variables PHP built from this request (for the tests).
require __DIR__ . '/common.php';
json_out(200, ['request' => $_REQUEST, 'cookie' => $_COOKIE, 'path_info' => $_SERVER['PATH_INFO'] ?? null]);
