#!/bin/sh
# Prints the package version: one dpkg and rpm both accept and order
# correctly, made from git ('-' is not allowed in either's upstream version,
# and a bare commit hash does not sort):
#   on tag v1.2.0                -> 1.2.0
#   on tag v1.3.0-rc.1           -> 1.3.0~rc.1          (~ sorts before 1.3.0)
#   5 commits after v1.2.0       -> 1.2.0+git5.abc1234
#   no tag yet, 42 commits       -> 0.0.0~git42.abc1234 (later commits sort higher)
#   uncommitted changes          -> .dirty appended (+dirty on a tag)
#   not a git checkout           -> 0.0.0~dev
set -eu
if ! sha=$(git rev-parse --short=7 HEAD 2>/dev/null); then
	echo 0.0.0~dev
	exit 0
fi
dirty=
git diff --quiet HEAD -- 2>/dev/null || dirty=dirty
if tag=$(git describe --tags --abbrev=0 --match 'v[0-9]*' 2>/dev/null); then
	version=$(echo "${tag#v}" | tr - '~')
	n=$(git rev-list --count "$tag..HEAD")
	meta=
	[ "$n" -eq 0 ] || meta=git$n.$sha
	meta=$meta${meta:+${dirty:+.}}$dirty
	echo "$version${meta:++$meta}"
else
	echo "0.0.0~git$(git rev-list --count HEAD).$sha${dirty:+.$dirty}"
fi
