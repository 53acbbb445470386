#!/bin/bash
# Interop over real UDP with wireguard-go (Debian packages wireguard-go and
# wireguard-tools), in a private network namespace: our tunnel first as
# initiator (pings the namespace's kernel through wireguard-go), then as
# responder (wireguard-go initiates; the kernel's pings are answered by us).
# Needs root. Usage: wireguard/tests/wireguard-go.sh
set -eu
cd "$(dirname "$0")/../.."
cargo build -q --release -p wireguard --example wg_go_peer
BIN=${CARGO_TARGET_DIR:-target}/release/examples/wg_go_peer
NS=moat-wg-$$
cleanup() { ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null || true; ip netns del "$NS" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
THEIR_PRIV=$(wg genkey); THEIR_PUB=$(echo "$THEIR_PRIV" | wg pubkey)
OUR_PRIV=$(wg genkey); OUR_PUB=$(echo "$OUR_PRIV" | wg pubkey)
ip netns exec "$NS" env WG_PROCESS_FOREGROUND=1 wireguard-go wgt0 >/dev/null 2>&1 &
for _ in $(seq 50); do ip -n "$NS" link show wgt0 >/dev/null 2>&1 && break; sleep 0.1; done
ip netns exec "$NS" wg set wgt0 private-key <(echo "$THEIR_PRIV") listen-port 51999 \
    peer "$OUR_PUB" allowed-ips 10.99.0.2/32 endpoint 127.0.0.1:52000
ip -n "$NS" addr add 10.99.0.1/24 dev wgt0
ip -n "$NS" link set wgt0 up
echo "== ours initiating"
ip netns exec "$NS" "$BIN" initiate "$OUR_PRIV" "$THEIR_PUB" 52000 51999
# Fresh keys on our side's peer entry force wireguard-go to start over.
ip netns exec "$NS" wg set wgt0 peer "$OUR_PUB" remove
ip netns exec "$NS" wg set wgt0 peer "$OUR_PUB" allowed-ips 10.99.0.2/32 endpoint 127.0.0.1:52001
echo "== ours responding"
ip netns exec "$NS" "$BIN" respond "$OUR_PRIV" "$THEIR_PUB" 52001 51999 &
RESP=$!
sleep 0.3
ip netns exec "$NS" ping -c 5 -i 0.3 -W 2 10.99.0.2 | tail -2
wait $RESP
echo "wireguard-go interop: ok"
