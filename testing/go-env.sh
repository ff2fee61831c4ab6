# Sourced by the scripts that build test tools from Go modules (testing/kube/build.sh,
# testing/deploy-tools/build.sh): messages, the Go to build with, and the environment that
# keeps a build from depending on the machine. Sets `start` and `go_version`.

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

if ! command -v go >/dev/null 2>&1; then
  if [[ -x /usr/local/go/bin/go ]]; then
    export PATH=/usr/local/go/bin:$PATH
  else
    die "go not found: install Go 1.26 or newer"
  fi
fi

# Build with the Go that is installed, never a downloaded toolchain, and keep the environment
# from changing what gets built.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off GOFLAGS=-buildvcs=false
unset GOOS GOARCH

start=$(date +%s)
go_version=$(go env GOVERSION)
say "using $go_version ($(command -v go))"

# Prints the value of "Key" from `go mod download -json` output on stdin.
json_field() { sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}\$/\1/p"; }
