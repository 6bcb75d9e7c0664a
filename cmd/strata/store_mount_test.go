package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRemoveRefusedWhileMounted: while "strata mount CONTAINER" serves a
// container, rm and rmi refuse (the daemon holds its directories open and
// the /proc scan sees it), and prune removes nothing the mount uses. Once
// unmounted, "rm -f" removes the container and its directories.
func TestRemoveRefusedWhileMounted(t *testing.T) {
	c := newCLI(t)
	c.imageWithContainer("held/image", "held")
	mnt := c.mount("held")

	msg := c.refuse("rm", "held")
	if !strings.Contains(msg, "mounted") {
		t.Errorf("rm's refusal does not say the container is mounted: %s", msg)
	}
	c.refuse("rmi", "held/image")
	c.refuse("rmi", "-f", "held/image") // -f does not orphan a container
	if out := c.must("prune"); strings.TrimSpace(out) != "" {
		t.Errorf("prune removed something while a container was mounted:\n%s", out)
	}
	checkImages(t, c, []string{"held/image:latest"})
	checkMountedContainer(t, c, "held")
	if b, err := os.ReadFile(filepath.Join(mnt, "etc", "motd")); err != nil || string(b) != "hello from held\n" {
		t.Fatalf("the mount stopped serving after the refused removals: %q, %v", b, err)
	}

	c.must("umount", mnt)
	pid, err := mountDaemon(mnt)
	if err == nil {
		if err := waitExit(pid); err != nil {
			t.Fatal(err)
		}
	}
	c.must("rm", "-f", "held")
	var rows []psRow
	c.jsonOut(&rows, "ps", "-a")
	if len(rows) != 0 {
		t.Errorf("ps -a after rm -f lists %+v", rows)
	}
	if dirs, _ := os.ReadDir(filepath.Join(c.root, "containers")); len(dirs) != 0 {
		t.Errorf("rm -f left %d container directories", len(dirs))
	}
	c.must("rmi", "held/image")
}

// TestImageMountIsReadOnly: "strata mount IMAGE" serves the image read-only:
// creating, writing, removing and mkdir fail with EROFS, and rmi refuses
// while the mount holds the image's layers.
func TestImageMountIsReadOnly(t *testing.T) {
	c := newCLI(t)
	c.must("import", "--quiet", rootfs(t, "ro"), "--name", "ro/image")
	mnt := c.mount("ro/image")

	if b, err := os.ReadFile(filepath.Join(mnt, "etc", "os-release")); err != nil || string(b) != "ID=ro\n" {
		t.Fatalf("read through the image mount: %q, %v", b, err)
	}
	attempts := map[string]func() error{
		"create": func() error { return os.WriteFile(filepath.Join(mnt, "new"), []byte("x"), 0o644) },
		"write": func() error {
			f, err := os.OpenFile(filepath.Join(mnt, "etc", "motd"), os.O_WRONLY, 0)
			if err == nil {
				f.Close()
			}
			return err
		},
		"remove": func() error { return os.Remove(filepath.Join(mnt, "etc", "motd")) },
		"mkdir":  func() error { return os.Mkdir(filepath.Join(mnt, "dir"), 0o755) },
		"chmod":  func() error { return os.Chmod(filepath.Join(mnt, "usr", "bin", "tool"), 0o700) },
	}
	for what, try := range attempts {
		if err := try(); !errors.Is(err, unix.EROFS) {
			t.Errorf("%s on a read-only image mount: %v; want EROFS", what, err)
		}
	}
	c.refuse("rmi", "ro/image")
}

// TestDiffShowsWritesThroughMount: files written, changed and removed
// through a container's mount show in "strata diff" with docker's letters.
func TestDiffShowsWritesThroughMount(t *testing.T) {
	c := newCLI(t)
	c.imageWithContainer("diff/image", "changed")
	mnt := c.mount("changed")

	writeTree(t, mnt, map[string]string{"hello.txt": "written through the mount\n", "etc/new.conf": "x=1\n"})
	if err := os.WriteFile(filepath.Join(mnt, "etc", "motd"), []byte("changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(mnt, "usr", "share", "doc", "a")); err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSpace(c.must("diff", "changed")), "\n")
	want := []string{"A /hello.txt", "C /etc", "A /etc/new.conf", "C /etc/motd", "C /usr", "C /usr/share", "C /usr/share/doc", "D /usr/share/doc/a"}
	for _, w := range want {
		if !containsLine(got, w) {
			t.Errorf("strata diff lacks %q; it says:\n%s", w, strings.Join(got, "\n"))
		}
	}
	if len(got) != len(want) {
		t.Errorf("strata diff has %d lines, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
}

func containsLine(lines []string, s string) bool {
	for _, l := range lines {
		if l == s {
			return true
		}
	}
	return false
}
