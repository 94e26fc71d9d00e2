# Shell helpers shared by bench/smoke and bench/compare (sourced, not run).
# Everything listens on loopback; every process started here is stopped by its PID.

# A free TCP and UDP port on 127.0.0.1, below the ephemeral range (so the load generator's own
# connections never take it) and within what sipreg accepts for its SIP ports (1024-49151).
free_port() {
  python3 - <<'PY'
import random, socket
for _ in range(200):
    p = random.randint(20000, 32000)
    try:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            s = socket.socket(socket.AF_INET, kind)
            s.bind(("127.0.0.1", p))
            s.close()
        print(p)
        break
    except OSError:
        pass
PY
}

# stop_pid PID: SIGTERM, up to 10 s of grace, then SIGKILL.
stop_pid() {
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# start_sipreg BIN DATA_DIR LOG [EXTRA_TOML]: starts `sipreg serve` on free loopback ports and
# waits until its token endpoint answers. Sets SIPREG_PID, HTTPS_PORT, SIP_OAUTH_PORT,
# CONFIG_HTTP_PORT, API_URL. Returns non-zero if it did not come up within 60 s.
start_sipreg() {
  local bin=$1 data=$2 log=$3 extra=${4:-}
  mkdir -p "$data"
  HTTPS_PORT=$(free_port)
  SIP_OAUTH_PORT=$(free_port)
  CONFIG_HTTP_PORT=$(free_port)
  local config_https sip sips
  config_https=$(free_port); sip=$(free_port); sips=$(free_port)
  cat > "$data.toml" <<TOML
[listen]
address = "127.0.0.1"
sip_port = $sip
secured_sip_port = $sips
$extra
TOML
  "$bin" --data-dir "$data" serve --config "$data.toml" --bind 127.0.0.1 --public-host localhost \
    --https-port "$HTTPS_PORT" --config-http-port "$CONFIG_HTTP_PORT" \
    --config-https-port "$config_https" --tftp-port 0 --sip-oauth-port "$SIP_OAUTH_PORT" \
    >"$log" 2>&1 &
  SIPREG_PID=$!
  API_URL="https://localhost:$HTTPS_PORT"
  for _ in $(seq 1 600); do
    if ! kill -0 "$SIPREG_PID" 2>/dev/null; then
      echo "sipreg exited during start-up; log:" >&2
      tail -20 "$log" >&2
      SIPREG_PID=
      return 1
    fi
    if [ -f "$data/tls/ca.pem" ] && [ -f "$data/admin-token" ] &&
      curl -fsS --max-time 2 --cacert "$data/tls/ca.pem" "$API_URL/oauth/jwks.json" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "sipreg did not answer within 60 s; log:" >&2
  tail -20 "$log" >&2
  return 1
}
