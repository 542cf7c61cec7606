"""Package names `edge-certd package --name` refuses: a roots package of that name would
replace a package the device needs to boot, to install packages or to decide what it trusts.

Data, not logic. Where each group comes from:
- ESSENTIAL_AND_REQUIRED: every package marked `Essential: yes` or `Priority: required` in
  Debian 12 (bookworm) and Debian 13 (trixie), as a debootstrap --variant=minbase root's
  /var/lib/dpkg/status lists them (read from the e2e test roots, which tests/e2e builds).
- PSEUDO_ESSENTIAL: the libraries those depend on (the C library and its companions); dpkg
  and apt break without them, though they carry neither field.
- TRUST_AND_BOOT: what decides what the device trusts or how it starts, updates and is
  reached: the trust stores and TLS libraries, systemd, the archive keys, ssh, sudo, and
  the IoT Edge and Device Update packages that deliver roots packages.
Each name is listed once even where several groups hold it; t64 variants (trixie's 64-bit
time_t renames) are listed beside their bookworm names.
"""

from __future__ import annotations

ESSENTIAL_AND_REQUIRED: frozenset[str] = frozenset(
    {
        "apt", "base-files", "base-passwd", "bash", "bsdutils", "coreutils", "dash", "debconf",
        "debianutils", "diffutils", "dpkg", "e2fsprogs", "findutils", "grep", "gzip", "hostname",
        "init-system-helpers", "libc-bin", "libpam-modules", "libpam-modules-bin",
        "libpam-runtime", "libtext-charwidth-perl", "libtext-wrapi18n-perl", "login",
        "login.defs", "mawk", "mount", "ncurses-base", "ncurses-bin", "passwd", "perl-base",
        "sed", "sensible-utils", "sysvinit-utils", "tar", "tzdata", "util-linux",
    }
)  # fmt: skip

PSEUDO_ESSENTIAL: frozenset[str] = frozenset(
    {
        "libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libselinux1", "libpam0g", "libcrypt1",
        "libacl1", "libattr1", "libaudit1", "libaudit-common", "libblkid1", "libmount1",
        "libuuid1", "libsmartcols1", "libtinfo6", "libncursesw6", "libpcre2-8-0", "liblzma5",
        "libzstd1", "libbz2-1.0", "libmd0", "libsepol2", "libsemanage2", "libcap2",
        "libcap-ng0", "libapt-pkg6.0", "libapt-pkg7.0", "libgmp10", "libdebconfclient0",
        "libxxhash0", "liblz4-1", "libudev1", "libsystemd0", "libseccomp2", "usr-is-merged",
        "gcc-12-base", "gcc-14-base",
    }
)  # fmt: skip

TRUST_AND_BOOT: frozenset[str] = frozenset(
    {
        # the trust stores and what reads them
        "ca-certificates", "ca-certificates-java", "ca-certificates-mono", "openssl",
        "openssl-provider-legacy", "libssl3", "libssl3t64", "libnss3", "libnss3-tools",
        "libgnutls30", "libgnutls30t64", "p11-kit", "p11-kit-modules", "libp11-kit0",
        "java-common", "edge-certd",
        # start, update, reach
        "systemd", "systemd-sysv", "udev", "init", "dbus", "debian-archive-keyring", "gpgv",
        "sqv", "sudo", "openssh-server", "openssh-client", "adduser", "ucf",
        # IoT Edge and Azure Device Update, which deliver roots packages to a fleet
        "aziot-edge", "aziot-identity-service", "iotedge", "moby-engine", "moby-cli",
        "deviceupdate-agent",
    }
)  # fmt: skip

PROTECTED: frozenset[str] = ESSENTIAL_AND_REQUIRED | PSEUDO_ESSENTIAL | TRUST_AND_BOOT

# dpkg's own temporary names: a roots directory ending so (`NAME.dpkg-new` while it is
# unpacked) is never read as a source, so such a package's roots would never be trusted.
DPKG_TEMPORARY_SUFFIXES: tuple[str, ...] = (".dpkg-new", ".dpkg-tmp", ".dpkg-old", ".dpkg-dist", ".dpkg-bak")
