#!/usr/bin/env bash
# Build the OpenTofu CLI and the providers our modules use from their Go
# modules, with no Terraform/OpenTofu registry and no GitHub downloads: only
# the Go module proxy is used.
#
# Everything lands under ${TONGXIN_CACHE:-$HOME/.cache/tongxin}/tofu:
#   bin/tofu                      the CLI (symlink to opentofu-<version>/tofu)
#   mirror/registry.opentofu.org/<ns>/<type>/<version>/<os>_<arch>/...
#                                 unpacked filesystem mirror of the providers
#   tofurc                        CLI config naming only that mirror
#   env.sh                        `. env.sh` sets PATH and TF_CLI_CONFIG_FILE
#   go-build/, go-mod/            Go build and module caches
#   stamps/                       what was built from which go.mod/go.sum
#
# Idempotent: an output whose stamp matches the pinned version and the
# go.mod/go.sum it was built from is not rebuilt. Versions: ../versions.env.
set -euo pipefail

TF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS_DIR=$TF_DIR/tools
# shellcheck source=/dev/null
. "$TF_DIR/versions.env"

CACHE_ROOT=${TONGXIN_CACHE:-$HOME/.cache/tongxin}
CACHE=$CACHE_ROOT/tofu
MIRROR=$CACHE/mirror
STAMPS=$CACHE/stamps

log() { printf '[build-tools] %s\n' "$*" >&2; }
die() { printf '[build-tools] ERROR: %s\n' "$*" >&2; exit 1; }

version_ge() { # version_ge A B: true when A >= B
    [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$2" ]
}

# --- Go ---------------------------------------------------------------------
find_go() {
    if command -v go >/dev/null 2>&1; then return 0; fi
    if [ -x /usr/local/go/bin/go ]; then
        export PATH=/usr/local/go/bin:$PATH
        return 0
    fi
    return 1
}

ensure_go() {
    if ! find_go; then
        log "go not found; checking whether Debian's golang is new enough (need >= $GO_MIN_VERSION)"
        command -v apt-get >/dev/null 2>&1 ||
            die "go is not installed and there is no apt-get: install Go >= $GO_MIN_VERSION and put it on PATH"
        local candidate
        candidate=$(apt-cache policy golang-go 2>/dev/null | awk '/Candidate:/ {print $2}')
        if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
            apt-get update -qq >/dev/null 2>&1 || true
            candidate=$(apt-cache policy golang-go 2>/dev/null | awk '/Candidate:/ {print $2}')
        fi
        # "2:1.19~1" -> "1.19"
        local upstream=${candidate#*:}
        upstream=${upstream%%[~+-]*}
        if [ -n "$upstream" ] && [ "$upstream" != "(none)" ] && version_ge "$upstream" "$GO_MIN_VERSION"; then
            log "installing Debian's golang ($candidate)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y golang >/dev/null
            find_go || die "apt-get installed golang but go is still not on PATH"
        else
            die "go is not installed and Debian's golang-go (${candidate:-none}) is older than the $GO_MIN_VERSION that OpenTofu $TOFU_VERSION needs. Install Go >= $GO_MIN_VERSION (e.g. unpack the official tarball to /usr/local/go) and run this again."
        fi
    fi
    # Never let go switch toolchains behind our back unless the caller asks.
    export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
    local have
    have=$(go env GOVERSION)
    have=${have#go}
    have=${have%%[ -]*}
    if [ "$GOTOOLCHAIN" = local ] && ! version_ge "$have" "$GO_MIN_VERSION"; then
        die "go $have is too old: OpenTofu $TOFU_VERSION and the pinned providers need Go >= $GO_MIN_VERSION (or set GOTOOLCHAIN=auto to let go fetch that toolchain from the module proxy)"
    fi
    log "using $(command -v go) (go$have)"
}

# --- helpers ----------------------------------------------------------------
goos_goarch() { go env GOOS GOARCH | paste -sd_ -; }

# The stamp says which pin and which go.mod/go.sum an output was built from.
stamp_of() { # stamp_of <tools dir> <pin text>
    {
        printf '%s\n' "$2"
        cat "$1/go.mod" "$1/go.sum"
    } | sha256sum | cut -d' ' -f1
}

# Check that the tool in <tools dir> comes from <module>@<version>.
check_pin() { # check_pin <tools dir> <module> <version>
    local got
    got=$(cd "$1" && go list -f '{{.ImportPath}} {{with .Module}}{{with .Replace}}{{.Path}}@{{.Version}}{{else}}{{.Path}}@{{.Version}}{{end}}{{end}}' tool) ||
        die "cannot read the tool of $1/go.mod"
    case "$got" in
    *" $2@$3") printf '%s\n' "${got%% *}" ;; # print the tool's package path
    *) die "$1/go.mod builds '$got' but versions.env pins $2@$3: update one of them" ;;
    esac
}

go_build() { # go_build <tools dir> <package> <output> <ldflags>
    local tmp
    tmp=$(mktemp "$3.tmp.XXXXXX")
    if ! (cd "$1" && CGO_ENABLED=0 nice -n 10 go build -mod=readonly -trimpath -ldflags "$4" -o "$tmp" "$2"); then
        rm -f "$tmp"
        die "go build $2 failed"
    fi
    chmod 0755 "$tmp"
    mv -f "$tmp" "$3"
}

# --- main -------------------------------------------------------------------
main() {
    local t0=$SECONDS
    mkdir -p "$CACHE" "$MIRROR" "$STAMPS" "$CACHE/bin"

    # One build at a time per cache (test.sh may be run from two shells).
    exec 9>"$CACHE/.lock"
    if command -v flock >/dev/null 2>&1; then
        flock 9
    fi

    ensure_go
    export GOCACHE=$CACHE/go-build
    export GOMODCACHE=$CACHE/go-mod
    export GOFLAGS="-mod=readonly -modcacherw -buildvcs=false"
    local platform
    platform=$(goos_goarch)

    # tofu
    local tofu_dir=$CACHE/opentofu-$TOFU_VERSION
    local tofu_bin=$tofu_dir/tofu
    local want
    want=$(stamp_of "$TOOLS_DIR" "tofu $TOFU_MODULE@$TOFU_MODULE_VERSION")
    if [ -x "$tofu_bin" ] && [ "$(cat "$STAMPS/tofu-$TOFU_VERSION" 2>/dev/null)" = "$want" ]; then
        log "tofu $TOFU_VERSION: cached ($tofu_bin)"
    else
        log "tofu $TOFU_VERSION: downloading modules and building (several minutes when cold)"
        local pkg s=$SECONDS
        pkg=$(check_pin "$TOOLS_DIR" "$TOFU_MODULE" "$TOFU_MODULE_VERSION")
        mkdir -p "$tofu_dir"
        go_build "$TOOLS_DIR" "$pkg" "$tofu_bin" "-s -w -X 'github.com/opentofu/opentofu/version.dev=no'"
        printf '%s\n' "$want" >"$STAMPS/tofu-$TOFU_VERSION"
        log "tofu $TOFU_VERSION: built in $((SECONDS - s))s"
    fi
    ln -sfn "$tofu_bin" "$CACHE/bin/tofu"

    # providers
    local addr version dir modver module modversion
    while read -r addr version dir modver; do
        [ -n "$addr" ] || continue
        module=${modver%@*}
        modversion=${modver#*@}
        local type=${addr#*/}
        local out_dir=$MIRROR/registry.opentofu.org/$addr/$version/$platform
        local out=$out_dir/terraform-provider-${type}_v$version
        local stamp_file=$STAMPS/provider-${addr//\//_}-$version-$platform
        want=$(stamp_of "$TOOLS_DIR/$dir" "$addr $version $modver")
        if [ -x "$out" ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$want" ]; then
            log "provider $addr $version: cached"
            continue
        fi
        log "provider $addr $version: building from $modver"
        local pkg s=$SECONDS ldflags="-s -w -X main.version=$version"
        pkg=$(check_pin "$TOOLS_DIR/$dir" "$module" "$modversion")
        case "$addr" in
        terraform-provider-openstack/openstack)
            ldflags="$ldflags -X $pkg/openstack.version=$version"
            ;;
        esac
        # A mirror directory holds exactly one provider package.
        rm -rf "$out_dir"
        mkdir -p "$out_dir"
        go_build "$TOOLS_DIR/$dir" "$pkg" "$out" "$ldflags"
        printf '%s\n' "$want" >"$stamp_file"
        log "provider $addr $version: built in $((SECONDS - s))s"
    done <<<"$PROVIDERS"

    # CLI config: only the filesystem mirror, so `tofu init` never reaches a
    # registry (a provider missing from the mirror is an error, not a fetch).
    cat >"$CACHE/tofurc.tmp" <<EOF
# Written by terraform/scripts/build-tools.sh: do not edit.
provider_installation {
  filesystem_mirror {
    path    = "$MIRROR"
    include = ["registry.opentofu.org/*/*"]
  }
}
EOF
    mv -f "$CACHE/tofurc.tmp" "$CACHE/tofurc"
    cat >"$CACHE/env.sh.tmp" <<EOF
# Written by terraform/scripts/build-tools.sh: source it to use the tools.
export PATH="$CACHE/bin:\$PATH"
export TF_CLI_CONFIG_FILE="$CACHE/tofurc"
EOF
    mv -f "$CACHE/env.sh.tmp" "$CACHE/env.sh"

    log "ready in $((SECONDS - t0))s: $(TF_CLI_CONFIG_FILE=$CACHE/tofurc "$CACHE/bin/tofu" version | head -n1)"
    log "  tofu:       $CACHE/bin/tofu"
    log "  CLI config: $CACHE/tofurc (mirror $MIRROR)"
    log "  use:        . $CACHE/env.sh"
}

main "$@"
