# Shared by the benchmark scripts (sourced, not run).

# Prints N free loopback ports, found by binding port 0.
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks: s.close()
PY
}

# Checks for etcd, builds c20 in release mode and sets C20 to the binary.
need_etcd_and_c20() {
    command -v etcd >/dev/null || { echo "etcd not found: apt-get install etcd-server" >&2; exit 1; }
    cargo build --release -q -p c20-cli
    C20=target/release/c20
}
