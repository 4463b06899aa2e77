# shellcheck shell=bash
# The bundle's OCI images (component "image"), sourced by bundle.sh: one image
# per architecture for hosts whose own Python is older than Tongxin needs
# (Kylin V10: 3.7, openEuler 22.03: 3.9). The host's podman runs it under
# systemd (role appliance, appliance_runtime: oci; docs/ansible.md).
#
#   images/<arch>/tongxin-<version>.tar   docker-archive, tagged localhost/tongxin:<version>
#
# What is in it: Debian 12's CPython 3.11 and OpenSSL 3 (libcrypto with SM2)
# with the libraries they need, unpacked from the same signed Debian archive
# as the bundle's packages; Tongxin and its pinned dependencies installed
# from the bundle's own wheels for that architecture into /opt/tongxin/lib.
# No shell, no package manager, no maintainer script run: nothing from the
# target architecture is executed while building, so the aarch64 image is
# built on an x86_64 machine without emulation.
#
# Needs: the wheels of the same build (component wheels), podman, dpkg-deb.

# Debian packages whose closure makes the image's system: the interpreter,
# libcrypto 3 (SM2 through ctypes), time zones, /etc/services.
IMAGE_DEBS=(python3.11 libssl3 tzdata netbase)
IMAGE_NAME=localhost/tongxin

build_image() {
  command -v podman >/dev/null || die "image: podman is needed (apt-get install podman)"
  command -v dpkg-deb >/dev/null || die "image: dpkg-deb is needed"
  local arch da s root closure pkgs=() file id out
  for arch in $ARCHES; do
    [ -f "$NEW/wheels/$arch/tongxin-$VERSION-py3-none-any.whl" ] ||
      die "image/$arch: no wheels/$arch/tongxin-$VERSION-*.whl in this build (BUNDLE_COMPONENTS needs wheels too)"
    da=$(deb_arch "$arch")
    s=$DL/apt/$da
    apt_state "$arch" image
    if ! closure=$(apt-get "${APT[@]}" -s -qq install "${IMAGE_DEBS[@]}" 2>"$WORK/apt.err"); then
      cat "$WORK/apt.err" >&2
      die "image/$arch: cannot resolve ${IMAGE_DEBS[*]}"
    fi
    mapfile -t pkgs < <(awk '/^Inst /{print $2"="substr($3,2)}' <<<"$closure" | sort -u)
    log "image/$arch: ${#pkgs[@]} Debian packages"
    # Into the shared download cache (apt checks each file against the signed index).
    (cd "$DL/debs/$arch" && nice -n 10 apt-get "${APT[@]}" -qq download "${pkgs[@]}" >&2) ||
      die "image/$arch: download failed"
    exec 9>&-
    root=$WORK/image-$arch
    mkdir -p "$root"
    for file in "${pkgs[@]}"; do
      # pkg=version -> pkg_version_arch.deb (an epoch's colon is %3a in the name)
      local name=${file%%=*} ver=${file#*=} deb
      deb=$(find "$DL/debs/$arch" -maxdepth 1 -name "${name}_${ver//:/%3a}_*.deb" -print -quit)
      [ -n "$deb" ] || die "image/$arch: downloaded ${name} ${ver} but cannot find its .deb"
      dpkg-deb -x "$deb" "$root"
    done
    # What dpkg's maintainer scripts would have made and the service needs:
    # accounts to name (the service runs as the host's numeric uid), /tmp,
    # the mount points.
    mkdir -p "$root/etc" "$root/tmp" "$root/etc/tongxin" "$root/var/lib/tongxin" "$root/opt/tongxin"
    chmod 1777 "$root/tmp"
    printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' \
      >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    pip_target "$arch"
    log "image/$arch: installing tongxin $VERSION from wheels/$arch"
    # The build machine's CPython 3.11 writes the bytecode: same version, so
    # the same .pyc format on every architecture.
    nice -n 10 "$PY" -m pip install -q --disable-pip-version-check --no-index \
      --find-links "$NEW/wheels/$arch" --only-binary=:all: "${PIP_TARGET[@]}" \
      --target "$root/opt/tongxin/lib" "tongxin==$VERSION" >&2 ||
      die "image/$arch: pip install into the image failed"
    # Console scripts written for the build machine's interpreter path.
    rm -rf "$root/opt/tongxin/lib/bin"
    tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$WORK/image-$arch.tar" .
    rm -rf "$root"
    mkdir -p "$NEW/images/$arch"
    out=$NEW/images/$arch/tongxin-$VERSION.tar
    # One tag in the build machine's image store: builds running at once
    # import, save and remove it one after the other.
    exec 8>"$DL/.image.lock"
    flock 8
    id=$(nice -n 10 podman import --quiet --os linux --arch "$da" \
      --change 'ENTRYPOINT ["/usr/bin/python3.11", "-m", "tongxin"]' \
      --change 'ENV PYTHONPATH=/opt/tongxin/lib' \
      --change 'ENV PYTHONDONTWRITEBYTECODE=1' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'ENV TONGXIN_LIBCRYPTO=libcrypto.so.3' \
      --change 'WORKDIR /var/lib/tongxin' \
      --change 'STOPSIGNAL SIGTERM' \
      --change 'LABEL org.opencontainers.image.title=tongxin' \
      --change "LABEL org.opencontainers.image.version=$VERSION" \
      "$WORK/image-$arch.tar" "$IMAGE_NAME:$VERSION") || die "image/$arch: podman import failed"
    podman save --quiet --format docker-archive -o "$out" "$IMAGE_NAME:$VERSION" ||
      die "image/$arch: podman save failed"
    podman rmi --force "$id" >/dev/null 2>&1 || true
    exec 8>&-
    rm -f "$WORK/image-$arch.tar"
    log "image/$arch: $out ($(du -h "$out" | cut -f1))"
  done
}
