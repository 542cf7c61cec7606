# Packaging targets for edge-certd.
#
#   make deb            build dist/edge-certd_<version>_all.deb (needs the build deps below)
#   sudo make build-deps
#                       install packaging/debian/control's Build-Depends (mk-build-deps)
#   make clean-deb      remove the build directory and dist/
#
# To build, install and start it on a device, and take the build-only packages away again:
#   sudo ./install
#
# dpkg-buildpackage wants debian/ at the top of the source tree, but the packaging lives in
# packaging/debian/; so the tree is copied to build/deb/ and packaging/debian becomes debian/ there.
# The version is edge_certd.__version__; packaging/debian/changelog's top entry must carry the
# same one (tests/test_packaging.py checks it), and dpkg-buildpackage takes it from there.

SHELL := /bin/sh

PACKAGE := edge-certd
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' edge_certd/__init__.py)
BUILD_DIR := build/deb
SRC_DIR := $(BUILD_DIR)/$(PACKAGE)-$(VERSION)
DIST_DIR := dist
DEB := $(DIST_DIR)/$(PACKAGE)_$(VERSION)_all.deb

# The Build-Depends are named once, in packaging/debian/control; mk-build-deps makes them into
# one edge-certd-build-deps package that apt installs together with all of them. These are the
# tools that do that: devscripts (mk-build-deps) with equivs (equivs-build), and
# build-essential, which dpkg-checkbuilddeps requires of every build and which Debian policy
# (4.2) says a package never lists.
BUILD_TOOLS := build-essential devscripts equivs

.PHONY: deb build-deps clean-deb

# The copy takes tracked and new-but-not-ignored files (so uncommitted work builds too), or,
# outside a git checkout, everything except build products. Debian's own python3 must build
# the package: a python3 earlier on PATH (pyenv, a venv) lacks python3-build and the Debian
# paths dh_python3 expects, hence the fixed PATH.
deb:
	@test -n "$(VERSION)" || { echo "no __version__ in edge_certd/__init__.py" >&2; exit 1; }
	@v=$$(dpkg-parsechangelog -l packaging/debian/changelog -S Version); test "$$v" = "$(VERSION)" || { \
		echo "packaging/debian/changelog's top entry is $$v, edge_certd/__init__.py says $(VERSION):" \
			"add a changelog entry (cd packaging && dch -v $(VERSION))" >&2; exit 1; }
	rm -rf $(BUILD_DIR)
	mkdir -p $(SRC_DIR) $(DIST_DIR)
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
		git ls-files -z --cached --others --exclude-standard \
			| xargs -0 sh -c 'for f; do [ -e "$$f" ] && printf "%s\0" "$$f"; done' sh \
			| tar --null -T - -cf - | tar -xf - -C $(SRC_DIR); \
	else \
		tar --exclude=./build --exclude=./dist --exclude=./.git --exclude='__pycache__' \
			-cf - . | tar -xf - -C $(SRC_DIR); \
	fi
	rm -rf $(SRC_DIR)/debian
	cp -a packaging/debian $(SRC_DIR)/debian
	cd $(SRC_DIR) && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b
	rm -f $(DIST_DIR)/$(PACKAGE)_*_all.deb
	cp $(BUILD_DIR)/$(PACKAGE)_$(VERSION)_all.deb $(DEB)
	@echo "built $(DEB)"

# mk-build-deps writes its package (and .buildinfo/.changes) into the working directory, so it
# runs in a scratch one; --remove deletes the package file once apt has installed it.
build-deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BUILD_TOOLS)
	scratch=$$(mktemp -d) && cd "$$scratch" && \
		DEBIAN_FRONTEND=noninteractive mk-build-deps --install --remove \
			--tool 'apt-get -y -q --no-install-recommends' $(CURDIR)/packaging/debian/control; \
		rc=$$?; rm -rf "$$scratch"; exit $$rc

clean-deb:
	rm -rf $(BUILD_DIR) $(DIST_DIR)
