<?php
// GET /authorize.php?response_type=code&client_id&redirect_uri&state: auto-approves.
require __DIR__ . '/common.php';
$p = $_REQUEST;
if (($p['response_type'] ?? '') !== 'code' || empty($p['client_id']) || empty($p['redirect_uri'])) {
    json_out(400, ['error' => 'invalid_request']);
}
$code = bin2hex(random_bytes(16));
file_put_contents(state_dir() . "/code_$code.json",
    json_encode(['client_id' => $p['client_id'], 'redirect_uri' => $p['redirect_uri']]));
$q = ['code' => $code];
if (isset($p['state'])) { $q['state'] = $p['state']; }
$sep = strpos($p['redirect_uri'], '?') === false ? '?' : '&';
header('Location: ' . $p['redirect_uri'] . $sep . http_build_query($q), true, 302);
