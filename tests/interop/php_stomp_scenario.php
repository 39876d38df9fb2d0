<?php
// Runs one interoperability scenario with PHP's stomp extension (Debian: php-stomp) and prints
// one JSON object on stdout: what the client saw, for the pytest side to check.
//
//   php php_stomp_scenario.php SCENARIO HOST PORT VERSION DESTINATION-SUFFIX
//
// SCENARIO: queue (five SENDs with receipts, a client-ack subscription reads and acks them
// all, then a new connection finds nothing left) or topic (a receipted SUBSCRIBE, a SEND with
// a custom header, the MESSAGE). VERSION: 1.0 (no accept-version header) or 1.2.
// Nothing here asserts; every wait is bounded.

[$script, $scenario, $host, $port, $version, $suffix] = $argv;
$result = ['scenario' => $scenario, 'client' => 'php-stomp ' . phpversion('stomp')];

function finish(array $result, int $code): void {
    echo json_encode($result), "\n";
    exit($code);
}

function connect(string $host, string $port, string $version): Stomp {
    $headers = $version === '1.0' ? [] : ['accept-version' => $version, 'host' => $host];
    $stomp = new Stomp("tcp://$host:$port", '', '', $headers);
    $stomp->setReadTimeout(5);
    return $stomp;
}

// Every MESSAGE until $count arrived or nothing came within the read timeout.
function read_messages(Stomp $stomp, int $count): array {
    $frames = [];
    while (count($frames) < $count && ($frame = $stomp->readFrame())) {
        $frames[] = $frame;
    }
    return $frames;
}

try {
    $stomp = connect($host, $port, $version);
    if ($scenario === 'queue') {
        $destination = "/queue/interop.php.$suffix";
        $result['receipts'] = [];
        for ($i = 1; $i <= 5; $i++) {
            // With a receipt header, send() returns only once the RECEIPT came (false otherwise).
            $result['receipts'][] = $stomp->send($destination, "m$i", ['receipt' => "send-$i"]);
        }
        $stomp->subscribe($destination, ['id' => 'php-sub', 'ack' => 'client-individual', 'receipt' => 'sub-1']);
        $result['bodies'] = [];
        $result['acks'] = [];
        foreach (read_messages($stomp, 5) as $frame) {
            $result['bodies'][] = $frame->body;
            $result['subscription'] = $frame->headers['subscription'] ?? null;
            $ack = $version === '1.2' ? ['id' => $frame->headers['ack']] : ['subscription' => 'php-sub'];
            $result['acks'][] = $stomp->ack($frame->headers['message-id'], $ack + ['receipt' => 'ack-' . $frame->body]);
        }
        unset($stomp);  // disconnects
        $again = connect($host, $port, $version);
        $again->setReadTimeout(1);
        $again->subscribe($destination, ['id' => 'after', 'ack' => 'auto']);
        $again->send($destination, 'sentinel', ['receipt' => 'send-sentinel']);
        $result['after_ack'] = array_map(fn($f) => $f->body, read_messages($again, 6));
    } elseif ($scenario === 'topic') {
        $destination = "/topic/interop.php.$suffix";
        $result['subscribed'] = $stomp->subscribe($destination, ['id' => 'php-topic', 'receipt' => 'sub-topic']);
        $stomp->send($destination, 'hello from php', ['x-origin' => 'php-stomp']);
        $frame = $stomp->readFrame();
        $result['message'] = $frame ? ['command' => $frame->command, 'headers' => $frame->headers, 'body' => $frame->body] : null;
    } else {
        $result['error'] = "unknown scenario $scenario";
        finish($result, 2);
    }
} catch (StompException $e) {
    $result['error'] = get_class($e) . ': ' . $e->getMessage();
    finish($result, 1);
}
finish($result, 0);
