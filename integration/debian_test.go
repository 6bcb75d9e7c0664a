package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The real workload: a Debian bookworm minbase tree (built and cached by
// .ci/debian-rootfs.sh) is the one lower layer of both targets, and dpkg
// runs in each (chroot, no network, no /proc) doing work that renames
// directories, replaces lower files and hard-links files. Every command
// must exit the same way on both, and the trees must match.

// debianExclusions are paths whose content depends on the clock, not on
// the filesystem: dpkg and update-alternatives log with timestamps.
var debianExclusions = map[string]string{
	"var/log/dpkg.log":         "dpkg logs each action with a timestamp",
	"var/log/alternatives.log": "update-alternatives logs with a timestamp",
}

func TestDebianWorkload(t *testing.T) {
	rootfs := debianRootfs(t)
	dir := t.TempDir()
	deb := buildProbePackage(t, filepath.Join(dir, "probe"))
	p := mountPair(t, dir, []string{rootfs}, []string{rootfs}, false, nil)

	archives := filepath.Join(rootfs, "var/cache/apt/archives")
	tzdata := findDeb(t, archives, "tzdata_")
	bash := findDeb(t, archives, "bash_")
	steps := [][]string{
		{"/usr/bin/dpkg", "--purge", "tzdata"},
		{"/usr/bin/dpkg", "-i", "/var/cache/apt/archives/" + tzdata},
		{"/usr/bin/dpkg", "-i", "/var/cache/apt/archives/" + bash},
		{"/usr/bin/dpkg", "-i", "/tmp/strata-probe.deb"},
		{"/bin/sh", "-c", "cat /usr/share/strata-probe/newdir/sub/c /usr/share/strata-probe/debconf-doc/copyright | wc -c"},
	}
	for _, v := range []*view{p.oracle, p.sut} {
		if err := copyFile(deb, filepath.Join(v.mnt, "tmp/strata-probe.deb")); err != nil {
			t.Fatalf("%s: %v", v.target.name(), err)
		}
	}
	for _, step := range steps {
		oOut, oErr := runInChroot(p.oracle.mnt, step)
		var sOut string
		var sErr error
		p.sut.guardedFor(5*time.Minute, fmt.Sprint(step), func() { sOut, sErr = runInChroot(p.sut.mnt, step) })
		if p.sut.hung != "" {
			t.Fatalf("%s hung during %s; FUSE connection aborted", sutName(), p.sut.hung)
		}
		if oErr != nil {
			t.Fatalf("%q fails on kernel overlayfs itself (%v):\n%s", step, oErr, lastLines(oOut, 30))
		}
		if sErr != nil {
			t.Fatalf("%q: kernel overlayfs: ok; %s: %v\n%s", step, sutName(), sErr, lastLines(sOut, 30))
		}
		if clockFree(oOut) != clockFree(sOut) {
			t.Errorf("%q printed differently.\nkernel overlayfs:\n%s\n%s:\n%s", step, lastLines(oOut, 20), sutName(), lastLines(sOut, 20))
		}
	}
	lowerMtime := func(path string) (unix.Timespec, bool) {
		var st unix.Stat_t
		err := unix.Lstat(filepath.Join(rootfs, path), &st)
		return st.Mtim, err == nil
	}
	oracleTree := p.walk(p.oracle)
	untouched := func(path string) bool {
		m, ok := lowerMtime(path)
		n := oracleTree.nodes[path]
		return ok && n != nil && n.mtime == m
	}
	ignore := func(path string) bool { _, skip := debianExclusions[path]; return skip }
	diffs := compareTrees(oracleTree, p.walk(p.sut), compareOptions{mtimeChecked: untouched, ignore: ignore})
	if len(diffs) > 0 {
		t.Errorf("after dpkg work on a Debian rootfs:\n%s", formatDiffs(diffs, 80))
	}
}

// clockFree drops the lines of command output that print the time
// (tzdata's postinst shows "Local time is now: ...").
func clockFree(out string) string {
	var keep []string
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, "ime is now:") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

// debianRootfs is the cached Debian tree; its absence is a failure.
func debianRootfs(t *testing.T) string {
	cache := os.Getenv("STRATA_TEST_CACHE")
	if cache == "" {
		cache = "/var/cache/strata-test"
	}
	rootfs := filepath.Join(cache, "bookworm-minbase")
	if info, err := os.Stat(filepath.Join(rootfs, "bin/sh")); err != nil || info.Mode()&0o111 == 0 {
		t.Fatalf("no Debian rootfs at %s (STRATA_TEST_CACHE=%q): run .ci/debian-rootfs.sh first (it builds and caches it with debootstrap)", rootfs, os.Getenv("STRATA_TEST_CACHE"))
	}
	return rootfs
}

func findDeb(t *testing.T, dir, prefix string) string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("the Debian rootfs has no package cache: %v (rebuild it with .ci/debian-rootfs.sh)", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) && strings.HasSuffix(e.Name(), ".deb") {
			return e.Name()
		}
	}
	t.Fatalf("no %s*.deb in %s (rebuild the rootfs with .ci/debian-rootfs.sh)", prefix, dir)
	return ""
}

// probePostinst renames a directory the package just unpacked, moves a
// directory with lower content across directories, and hard-links both a
// packaged file and a lower file.
const probePostinst = `#!/bin/sh
set -e
if [ "$1" = configure ]; then
	cd /usr/share/strata-probe
	mv olddir newdir
	ln newdir/a a.hardlink
	mv /usr/share/doc/debconf /usr/share/strata-probe/debconf-doc
	ln /usr/bin/dpkg-query dpkg-query.hardlink
	mkdir /usr/share/doc/moved-here
	mv /usr/share/doc/gzip /usr/share/doc/moved-here/gzip
	chmod 700 /usr/share/doc/moved-here/gzip
fi
`

// buildProbePackage writes the strata-probe package tree under dir and
// builds it with dpkg-deb; it returns the .deb's path.
func buildProbePackage(t *testing.T, dir string) string {
	t.Helper()
	root := filepath.Join(dir, "root")
	files := map[string]string{
		"DEBIAN/control": "Package: strata-probe\nVersion: 1.0\nArchitecture: all\n" +
			"Maintainer: strata tests <tests@strata.invalid>\nDescription: renames directories and hard-links files\n",
		"DEBIAN/postinst":                        probePostinst,
		"usr/share/strata-probe/olddir/a":        "file a\n",
		"usr/share/strata-probe/olddir/b":        "file b\n",
		"usr/share/strata-probe/olddir/sub/c":    "file c\n",
		"usr/share/strata-probe/linked":          "linked in the package\n",
		"usr/share/doc/strata-probe/copyright":   "public domain\n",
		"etc/strata-probe.conf":                  "setting=1\n",
		"usr/share/strata-probe/big/zero-filled": strings.Repeat("\x00", 1<<20),
	}
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		perm := os.FileMode(0o644)
		if name == "DEBIAN/postinst" {
			perm = 0o755
		}
		if err := os.WriteFile(p, []byte(content), perm); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Link(filepath.Join(root, "usr/share/strata-probe/linked"), filepath.Join(root, "usr/share/strata-probe/linked.2")); err != nil {
		t.Fatal(err)
	}
	deb := filepath.Join(dir, "strata-probe.deb")
	out, err := exec.Command("dpkg-deb", "--root-owner-group", "--build", root, deb).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb --build: %v\n%s", err, out)
	}
	return deb
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o644)
}

// runInChroot runs argv with root directory mnt and a fixed environment.
func runInChroot(mnt string, argv []string) (string, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = "/"
	cmd.Env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"DEBIAN_FRONTEND=noninteractive", "LANG=C", "LC_ALL=C", "HOME=/root", "TZ=UTC",
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: mnt}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("exit: %w", err)
	}
	return string(out), nil
}
