<?php
// POST /token.php: grant_type=authorization_code&code&client_id, read from $_REQUEST.
require __DIR__ . '/common.php';
$seen = seen_load();
$seen['token_requests'] += 1;
seen_save($seen);
$p = $_REQUEST;
if (($p['grant_type'] ?? '') !== 'authorization_code') {
    json_out(400, ['error' => 'unsupported_grant_type']);
}
$code = is_string($p['code'] ?? null) ? $p['code'] : '';
$file = state_dir() . "/code_$code.json";
if (!preg_match('/^[0-9a-f]{32}$/', $code) || !is_file($file)) {
    json_out(400, ['error' => 'invalid_grant']);
}
$entry = json_decode(file_get_contents($file), true);
if ($entry['client_id'] !== ($p['client_id'] ?? null)) {
    json_out(400, ['error' => 'invalid_grant']);
}
unlink($file);                      // single use
$seen['redeemed'][] = $code;
seen_save($seen);
json_out(200, ['access_token' => bin2hex(random_bytes(16)), 'token_type' => 'Bearer', 'expires_in' => 3600]);
