#!/usr/bin/env bash
# Runs the whole system locally: the bridge with its embedded broker, the agent on the demo clip
# (looped, written as HLS), and the viewer page. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$PWD/demo-out"
HTTP_PORT=${SPOTTER_DEMO_PORT:-8080}
MQTT_PORT=${SPOTTER_DEMO_MQTT_PORT:-1883}
BIN=target/debug

if [ ! -s "$OUT/demo.mp4" ] || [ ! -s "$OUT/catalog/catalog.toml" ]; then
  echo "demo: generating the demo catalog and clip (once)"
  "$BIN/spotter-clipgen" demo --out "$OUT"
fi
rm -rf "$OUT/hls" && mkdir -p "$OUT/hls"
# The chat's signing key, made once and kept, so tokens outlive a restart of the demo.
if [ ! -s "$OUT/chat.key" ]; then
  (umask 077 && head -c 48 /dev/urandom | base64 -w0 > "$OUT/chat.key")
fi

cat > "$OUT/bridge.toml" <<TOML
[http]
listen = "127.0.0.1:$HTTP_PORT"
[mqtt]
embedded = true
embedded_listen = "127.0.0.1:$MQTT_PORT"
[catalog]
dir = "$OUT/catalog"
[web]
vendor_dir = "$PWD/cloud-bridge/web/vendor"
hls_dir = "$OUT/hls"
[[stream]]
studio = "demo"
stream = "main"
video_url = "/hls/index.m3u8"
[chat]
guests = true
key_file = "$OUT/chat.key"
state_dir = "$OUT/chat-state"
TOML

pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "demo: stopping"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

"$BIN/spotter-bridge" --config "$OUT/bridge.toml" & pids+=($!)
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null 2>&1 && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "demo: the bridge exited" >&2; exit 1; }
  sleep 0.1
done

SPOTTER_AGENT__SOURCE__URI="file://$OUT/demo.mp4" \
SPOTTER_AGENT__ANALYSIS__CATALOG="$OUT/catalog" \
SPOTTER_AGENT__UPLOAD__HLS_DIR="$OUT/hls" \
SPOTTER_AGENT__OUTBOX__DIR="$OUT/outbox" \
SPOTTER_AGENT__MQTT__URL="mqtt://127.0.0.1:$MQTT_PORT" \
  "$BIN/spotter-agent" --config agent/examples/demo.toml & pids+=($!)

URL="http://127.0.0.1:$HTTP_PORT/watch/demo/main"
HOST_TOKEN=$("$BIN/spotter-bridge" token --config "$OUT/bridge.toml" --user host --name "Host" --moderator --ttl 12h)
echo
echo "  Spotter demo running: open $URL"
echo "  (viewers pick a name to chat; the host, who can delete messages and ban, opens"
echo "   $URL#token=$HOST_TOKEN )"
echo "  (Ctrl-C stops it)"
echo
if [ -n "${DISPLAY:-}" ] && command -v xdg-open >/dev/null; then xdg-open "$URL" >/dev/null 2>&1 || true; fi
wait -n "${pids[@]}"
