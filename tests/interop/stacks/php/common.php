<?php
// Shared by the scripts of this legacy OAuth server (plain PHP, no framework, no PKCE).
// Every request is a fresh PHP execution, so state lives in files under $STACK_STATE.
function state_dir() {
    $dir = getenv('STACK_STATE') ?: sys_get_temp_dir() . '/pkce-stack-php';
    if (!is_dir($dir)) { @mkdir($dir, 0700, true); }
    return $dir;
}
function json_out($status, $body) {
    http_response_code($status);
    header('Content-Type: application/json');
    header('Cache-Control: no-store');
    echo json_encode($body);
    exit;
}
function seen_load() {
    $f = state_dir() . '/seen.json';
    return is_file($f) ? json_decode(file_get_contents($f), true) : ['token_requests' => 0, 'redeemed' => []];
}
function seen_save($seen) {
    file_put_contents(state_dir() . '/seen.json', json_encode($seen), LOCK_EX);
}
