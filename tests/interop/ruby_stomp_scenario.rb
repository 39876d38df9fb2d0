# Runs one interoperability scenario with Ruby's stomp gem (Debian: ruby-stomp) and prints one
# JSON object on stdout: what the client saw, for the pytest side to check.
#
#   ruby ruby_stomp_scenario.rb SCENARIO HOST PORT VERSION DESTINATION-SUFFIX
#
# SCENARIO: queue (five SENDs with receipts, a client-ack subscription reads and acks them all,
# then a new connection finds nothing left) or topic (a receipted SUBSCRIBE, a SEND with a
# custom header, the MESSAGE). VERSION: 1.0 (no accept-version header) or 1.2.
# Nothing here asserts; every wait is bounded.
require "json"
require "stomp"
require "timeout"

scenario, host, port, version, suffix = ARGV
result = { "scenario" => scenario, "client" => "ruby stomp #{Stomp::Version::STRING}" }
WAIT = 5

def connect(host, port, version)
  params = {
    hosts: [{ login: "", passcode: "", host: host, port: port.to_i }],
    reliable: false, connect_timeout: WAIT, max_reconnect_attempts: 0,
  }
  params[:connect_headers] = { "accept-version" => version, "host" => host } unless version == "1.0"
  Stomp::Connection.new(params)
end

# The next frame, or nil after WAIT seconds.
def next_frame(conn, wait = WAIT)
  Timeout.timeout(wait) { conn.receive }
rescue Timeout::Error
  nil
end

def frame_json(frame)
  frame && { "command" => frame.command, "headers" => frame.headers, "body" => frame.body }
end

begin
  conn = connect(host, port, version)
  result["connected"] = frame_json(conn.connection_frame)
  case scenario
  when "queue"
    destination = "/queue/interop.ruby.#{suffix}"
    result["receipts"] = (1..5).map do |i|
      conn.publish(destination, "m#{i}", { "receipt" => "send-#{i}" })
      frame = next_frame(conn)
      frame && frame.command == "RECEIPT" ? frame.headers["receipt-id"] : frame_json(frame)
    end
    conn.subscribe(destination, { "id" => "ruby-sub", "ack" => "client-individual" })
    result["bodies"] = []
    result["acks"] = []
    # MESSAGEs and the RECEIPTs of their ACKs interleave: sort them by command.
    while result["bodies"].size < 5 || result["acks"].size < result["bodies"].size
      frame = next_frame(conn)
      break unless frame
      if frame.command == "RECEIPT"
        result["acks"] << frame.headers["receipt-id"]
        next
      end
      break unless frame.command == "MESSAGE"
      result["bodies"] << frame.body
      result["subscription"] = frame.headers["subscription"]
      if version == "1.2"
        conn.ack(frame.headers["ack"], { "receipt" => "ack-#{frame.body}" })
      else
        conn.ack(frame.headers["message-id"], { "subscription" => "ruby-sub", "receipt" => "ack-#{frame.body}" })
      end
    end
    conn.disconnect
    again = connect(host, port, version)
    again.subscribe(destination, { "id" => "after", "ack" => "auto" })
    again.publish(destination, "sentinel")
    result["after_ack"] = []
    while (frame = next_frame(again, 1))
      result["after_ack"] << frame.body
      break if frame.body == "sentinel"
    end
    again.disconnect
  when "topic"
    destination = "/topic/interop.ruby.#{suffix}"
    conn.subscribe(destination, { "id" => "ruby-topic", "receipt" => "sub-topic" })
    receipt = next_frame(conn)
    result["subscribe_receipt"] = receipt && receipt.headers["receipt-id"]
    conn.publish(destination, "hello from ruby", { "x-origin" => "ruby-stomp" })
    result["message"] = frame_json(next_frame(conn))
    conn.disconnect
  else
    result["error"] = "unknown scenario #{scenario}"
  end
rescue StandardError => e
  result["error"] = "#{e.class}: #{e.message}"
end
puts JSON.generate(result)
exit(result.key?("error") ? 1 : 0)
