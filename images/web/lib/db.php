<?php
// Finds the world database through etcd v3 and connects to it as the application user.
//
// The database address comes from etcd's v3 JSON gateway (`POST {endpoint}/v3/kv/range`
// with a base64 key), the same key the announcer keeps alive beside the db container.
// Every setting comes from the environment; nothing secret is written into the image.
// Every network step has a short timeout, so a dead etcd or database gives an error within
// seconds instead of a hung page.
//
// Environment:
//   ETCD_ENDPOINTS  etcd client URLs, comma-separated, tried in order (default http://127.0.0.1:2379)
//   DB_ETCD_KEY     the key holding the db address (default /services/db/db_private_ip)
//   DB_HOST         the db address; when set, etcd is not asked
//   DB_PORT         the db port (default 3306)
//   APP_DB_NAME     the database (default world)
//   APP_USER        the database user (default app)
//   APP_PW          its password, or APP_PW_FILE: a file whose first line is the password
//   WEB_TIMEOUT     seconds for each etcd request and database connect/read (default 2)

declare(strict_types=1);

/** Why the database cannot be used; the message is for the log, never for the page. */
final class DbUnavailable extends RuntimeException
{
}

/** The variable's value, or `$default` when it is unset or empty. */
function env_or(string $name, string $default): string
{
    $v = getenv($name);
    return ($v === false || $v === '') ? $default : $v;
}

/** Seconds allowed for each etcd request and each database connect or read. */
function web_timeout(): float
{
    $t = env_or('WEB_TIMEOUT', '2');
    if (!is_numeric($t) || (float) $t <= 0) {
        throw new DbUnavailable("WEB_TIMEOUT must be a positive number of seconds, not '$t'");
    }
    return (float) $t;
}

/** The application user's password: APP_PW, else the first line of the file APP_PW_FILE. */
function app_password(): string
{
    $pw = getenv('APP_PW');
    if ($pw !== false && $pw !== '') {
        return $pw;
    }
    $file = getenv('APP_PW_FILE');
    if ($file === false || $file === '') {
        throw new DbUnavailable('no database password: set APP_PW or APP_PW_FILE');
    }
    $text = @file_get_contents($file);
    if ($text === false) {
        throw new DbUnavailable("cannot read APP_PW_FILE $file");
    }
    return rtrim(explode("\n", $text, 2)[0], "\r");
}

/**
 * The IPv4 address in a stored value: the announcer's `{"value": "<ip>"}`, a `json`-layout
 * record's `private_ipv4_addr`, or a bare address. Null when the value holds none.
 */
function decode_db_address(string $raw): ?string
{
    $text = trim($raw);
    if (filter_var($text, FILTER_VALIDATE_IP, FILTER_FLAG_IPV4) !== false) {
        return $text;
    }
    $doc = json_decode($text, true);
    if (!is_array($doc)) {
        return null;
    }
    $ip = $doc['value'] ?? $doc['private_ipv4_addr'] ?? null;
    if (is_string($ip) && filter_var(trim($ip), FILTER_VALIDATE_IP, FILTER_FLAG_IPV4) !== false) {
        return trim($ip);
    }
    return null;
}

/**
 * Reads `$key` from one etcd member through the v3 JSON gateway.
 *
 * Returns the value's bytes, or null when etcd answered that the key does not exist.
 * Throws DbUnavailable when the member cannot be reached or answers something else.
 */
function etcd_get(string $endpoint, string $key, float $timeout): ?string
{
    $base = rtrim(trim($endpoint), '/');
    if (!preg_match('#^https?://#i', $base)) {
        $base = "http://$base";
    }
    $context = stream_context_create(['http' => [
        'method' => 'POST',
        'header' => "Content-Type: application/json\r\nConnection: close\r\n",
        'content' => json_encode(['key' => base64_encode($key)]),
        'timeout' => $timeout,
        'ignore_errors' => true, // read the body of an error answer too, then judge it below
    ]]);
    $body = @file_get_contents("$base/v3/kv/range", false, $context);
    if ($body === false) {
        throw new DbUnavailable("etcd $base did not answer");
    }
    $doc = json_decode($body, true);
    if (!is_array($doc) || !isset($doc['header'])) {
        throw new DbUnavailable("etcd $base answered something other than a range response: " . substr($body, 0, 200));
    }
    $value = $doc['kvs'][0]['value'] ?? null;
    if ($value === null) {
        return null;
    }
    $bytes = base64_decode((string) $value, true);
    if ($bytes === false) {
        throw new DbUnavailable("etcd $base returned a value that is not base64");
    }
    return $bytes;
}

/**
 * Where the database is: `[host, port, source]`. DB_HOST wins; otherwise the first etcd
 * endpoint that answers decides (a missing key there is an answer: etcd reads are
 * consistent, so no other member would know better).
 */
function db_target(): array
{
    $port = env_or('DB_PORT', '3306');
    if (!preg_match('/^[0-9]{1,5}$/', $port) || (int) $port < 1 || (int) $port > 65535) {
        throw new DbUnavailable("DB_PORT must be a port number, not '$port'");
    }
    $host = getenv('DB_HOST');
    if ($host !== false && $host !== '') {
        return [$host, (int) $port, 'DB_HOST'];
    }
    $key = env_or('DB_ETCD_KEY', '/services/db/db_private_ip');
    $timeout = web_timeout();
    $errors = [];
    foreach (explode(',', env_or('ETCD_ENDPOINTS', 'http://127.0.0.1:2379')) as $endpoint) {
        if (trim($endpoint) === '') {
            continue;
        }
        try {
            $raw = etcd_get($endpoint, $key, $timeout);
        } catch (DbUnavailable $e) {
            $errors[] = $e->getMessage();
            continue;
        }
        if ($raw === null) {
            throw new DbUnavailable("etcd has no key $key (is the db announced?)");
        }
        $ip = decode_db_address($raw);
        if ($ip === null) {
            throw new DbUnavailable("etcd key $key holds no IPv4 address: " . json_encode($raw));
        }
        return [$ip, (int) $port, "etcd key $key"];
    }
    throw new DbUnavailable('no etcd endpoint answered: ' . implode('; ', $errors));
}

/** A connection to the application database as the application user, in utf8mb4. */
function db_connect(): mysqli
{
    [$host, $port] = db_target();
    $timeout = web_timeout();
    mysqli_report(MYSQLI_REPORT_OFF);
    $db = mysqli_init();
    $db->options(MYSQLI_OPT_CONNECT_TIMEOUT, (int) ceil($timeout));
    $db->options(MYSQLI_OPT_READ_TIMEOUT, (int) ceil($timeout));
    $user = env_or('APP_USER', 'app');
    $name = env_or('APP_DB_NAME', 'world');
    if (!@$db->real_connect($host, $user, app_password(), $name, $port)) {
        throw new DbUnavailable("cannot connect to $name at $host:$port as $user: " . mysqli_connect_error());
    }
    // The world data is stored latin1; the server converts it to UTF-8 for this connection.
    if (!$db->set_charset('utf8mb4')) {
        throw new DbUnavailable('cannot select utf8mb4: ' . $db->error);
    }
    return $db;
}

/** Runs `$sql` and returns every row as an associative array. */
function db_rows(mysqli $db, string $sql): array
{
    $result = $db->query($sql);
    if ($result === false) {
        throw new DbUnavailable("query failed: {$db->error}");
    }
    return $result->fetch_all(MYSQLI_ASSOC);
}
