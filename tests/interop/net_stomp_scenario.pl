#!/usr/bin/perl
# Runs one interoperability scenario with Perl's Net::Stomp (Debian: libnet-stomp-perl) and
# prints one JSON object on stdout: what the client saw, for the pytest side to check.
#
#   perl net_stomp_scenario.pl SCENARIO HOST PORT [LOGIN PASSCODE] [DESTINATION-SUFFIX]
#
# Net::Stomp sends no accept-version unless asked, so by default it is a STOMP 1.0 client.
# Nothing here asserts; every wait is bounded (timeouts in seconds below).
use strict;
use warnings;
use IO::Select;
use JSON::PP;
use Net::Stomp;
use Net::Stomp::Frame;

my ($scenario, $host, $port, $login, $passcode, $suffix) = @ARGV;
$suffix ||= "$$." . time();
my $WAIT = 5;
my %result = (scenario => $scenario);

sub finish {
    my ($code) = @_;
    print JSON::PP->new->canonical->encode(\%result), "\n";
    exit $code;
}

local $SIG{ALRM} = sub { $result{error} = "timeout after 15 s"; finish(2) };
alarm 15;

sub client {
    my ($connect_headers) = @_;
    my $stomp = Net::Stomp->new({
        hostname => $host, port => $port, timeout => $WAIT,
        initial_reconnect_attempts => 1, reconnect_attempts => 1,
    });
    my %headers = (%{ $connect_headers || {} });
    if ($login) { $headers{login} = $login; $headers{passcode} = $passcode; }
    my $frame = $stomp->connect(\%headers);
    return ($stomp, $frame);
}

sub frame_json {
    my ($frame) = @_;
    return undef unless $frame;
    return { command => $frame->command, headers => { %{ $frame->headers || {} } }, body => $frame->body };
}

# Waits for the RECEIPT of a frame sent with receipt => $id; anything else first is an error.
sub await_receipt {
    my ($stomp, $id) = @_;
    my $frame = $stomp->receive_frame({ timeout => $WAIT });
    return $frame && $frame->command eq 'RECEIPT' && $frame->headers->{'receipt-id'} eq $id;
}

my %scenarios = (
    # STOMP 1.0: subscribe to a topic, send with a custom header, receive it intact.
    topic => sub {
        my ($stomp, $connected) = client();
        $result{connected} = frame_json($connected);
        my $destination = "/topic/interop.perl.$suffix";
        $stomp->subscribe({ destination => $destination, ack => 'auto', receipt => 'sub-1' });
        $result{subscribe_receipt} = await_receipt($stomp, 'sub-1') ? JSON::PP::true : JSON::PP::false;
        $stomp->send({ destination => $destination, body => "hello from perl", 'x-origin' => 'net-stomp' });
        $result{message} = frame_json($stomp->receive_frame({ timeout => $WAIT }));
        $stomp->disconnect;
    },

    # STOMP 1.2 negotiated on request: CONNECTED says 1.2, and a queue round trip works.
    version12 => sub {
        my ($stomp, $connected) = client({ 'accept-version' => '1.2', host => '/' });
        $result{connected} = frame_json($connected);
        my $destination = "/queue/interop.perl12.$suffix";
        $stomp->send({ destination => $destination, body => "queued for 1.2", receipt => 'send-1' });
        $result{send_receipt} = await_receipt($stomp, 'send-1') ? JSON::PP::true : JSON::PP::false;
        $stomp->subscribe({ destination => $destination, id => 'perl-sub', ack => 'auto' });
        $result{message} = frame_json($stomp->receive_frame({ timeout => $WAIT }));
        $stomp->disconnect;
    },

    # STOMP 1.0 ack:client with ACK by message-id: an acknowledged message is not redelivered.
    ack => sub {
        my $destination = "/queue/interop.perlack.$suffix";
        my ($stomp) = client();
        $stomp->send({ destination => $destination, body => "ack me" });
        $stomp->subscribe({ destination => $destination, ack => 'client' });
        my $message = $stomp->receive_frame({ timeout => $WAIT });
        $result{first} = frame_json($message);
        $stomp->ack({ frame => $message, receipt => 'ack-1' }) if $message;
        $result{ack_receipt} = await_receipt($stomp, 'ack-1') ? JSON::PP::true : JSON::PP::false;
        $stomp->disconnect;
        my ($again) = client();
        $again->subscribe({ destination => $destination, ack => 'auto' });
        $again->send({ destination => $destination, body => "sentinel" });
        my @bodies;
        while (my $frame = $again->receive_frame({ timeout => 1 })) {
            push @bodies, $frame->body;
            last if $frame->body eq 'sentinel';
        }
        $result{after_reconnect} = \@bodies;
        $again->disconnect;
    },

    # CONNECT with the login and passcode given: CONNECTED, or an ERROR for a wrong passcode.
    login => sub {
        my ($stomp, $reply) = client();
        $result{reply} = frame_json($reply);
    },

    # A SEND without a destination gets an ERROR frame (with the receipt-id asked for),
    # then the broker closes the connection.
    error => sub {
        my ($stomp) = client();
        $stomp->send_frame(Net::Stomp::Frame->new({
            command => 'SEND', headers => { receipt => 'bad-1' }, body => 'nowhere to go',
        }));
        $result{error_frame} = frame_json($stomp->receive_frame({ timeout => $WAIT }));
        my $socket = $stomp->socket;
        my $closed = JSON::PP::false;
        if (IO::Select->new($socket)->can_read($WAIT)) {
            my $n = sysread($socket, my $buffer, 4096);
            $closed = JSON::PP::true if defined $n && $n == 0;
            $closed = JSON::PP::true if !defined $n;  # reset by peer: closed as well
        }
        $result{closed_after_error} = $closed;
    },
);

unless ($scenarios{$scenario}) {
    $result{error} = "unknown scenario $scenario; known: " . join(', ', sort keys %scenarios);
    finish(2);
}
eval { $scenarios{$scenario}->(); 1 } or do { $result{error} = "$@"; finish(1) };
finish(0);
