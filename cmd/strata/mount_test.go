package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strata-fs/strata/runner"
	"golang.org/x/sys/unix"
)

// These tests drive the built binary the way a user or mount(8) does.

// strataBin is built once by TestMain (store_cli_test.go).

// stack is a two-layer union with an upper layer, in a test's temp dir.
type stack struct {
	dir, l1, l2, upper, work, mnt string
}

func newStack(t *testing.T) *stack {
	t.Helper()
	d := t.TempDir()
	s := &stack{dir: d, l1: d + "/l1", l2: d + "/l2", upper: d + "/upper", work: d + "/work", mnt: d + "/mnt"}
	for _, p := range []string{s.l1, s.l2, s.upper, s.work, s.mnt} {
		must(t, os.MkdirAll(p, 0o755))
	}
	must(t, os.WriteFile(s.l2+"/a", []byte("lower a\n"), 0o644))
	must(t, os.WriteFile(s.l1+"/b", []byte("top b\n"), 0o644))
	return s
}

func (s *stack) args() []string {
	return []string{"mount", "--lower", s.l1, "--lower", s.l2, "--upper", s.upper, "--work", s.work, s.mnt}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func strata(args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command(strataBin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func isMounted(path string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

// unmountAtEnd makes sure nothing stays mounted, also when the test fails.
func unmountAtEnd(t *testing.T, mnt string) {
	t.Cleanup(func() {
		for i := 0; i < 5 && isMounted(mnt); i++ {
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
}

func daemonPid(t *testing.T, mnt string) int {
	t.Helper()
	out, err := exec.Command("pgrep", "-f", "strata mount.* "+mnt+"$").Output()
	if err != nil {
		t.Fatalf("no daemon for %s: %v", mnt, err)
	}
	var pid int
	for _, f := range strings.Fields(string(out)) {
		if _, err := fmtSscan(f, &pid); err == nil {
			return pid
		}
	}
	t.Fatalf("no daemon pid in %q", out)
	return 0
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if !runner.Running(pid) {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("daemon %d still running", pid)
}

func TestMountReturnsWhenLiveAndUmountEndsDaemon(t *testing.T) {
	s := newStack(t)
	unmountAtEnd(t, s.mnt)
	if out, err := strata(s.args()...); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	b, err := os.ReadFile(s.mnt + "/a")
	if err != nil || string(b) != "lower a\n" {
		t.Fatalf("right after mount returned: %q, %v", b, err)
	}
	pid := daemonPid(t, s.mnt)
	if out, err := strata("umount", s.mnt); err != nil {
		t.Fatalf("umount: %v: %s", err, out)
	}
	waitGone(t, pid)
	if isMounted(s.mnt) {
		t.Fatal("still mounted after strata umount")
	}
}

func TestSigtermUnmounts(t *testing.T) {
	s := newStack(t)
	unmountAtEnd(t, s.mnt)
	if out, err := strata(s.args()...); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	pid := daemonPid(t, s.mnt)
	must(t, syscall.Kill(pid, syscall.SIGTERM))
	waitGone(t, pid)
	if isMounted(s.mnt) {
		t.Fatal("SIGTERM left the mount")
	}
}

func TestFusermountAndUmountWork(t *testing.T) {
	for _, tool := range [][]string{{"umount"}, {"fusermount3", "-u"}} {
		s := newStack(t)
		unmountAtEnd(t, s.mnt)
		if out, err := strata(s.args()...); err != nil {
			t.Fatalf("mount: %v: %s", err, out)
		}
		pid := daemonPid(t, s.mnt)
		if out, err := exec.Command(tool[0], append(tool[1:], s.mnt)...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", tool, err, out)
		}
		waitGone(t, pid)
	}
}

func TestDeadMountpointIsRecovered(t *testing.T) {
	s := newStack(t)
	unmountAtEnd(t, s.mnt)
	if out, err := strata(s.args()...); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	pid := daemonPid(t, s.mnt)
	must(t, syscall.Kill(pid, syscall.SIGKILL))
	waitGone(t, pid)
	var st unix.Statfs_t
	if err := unix.Statfs(s.mnt, &st); !deadFUSE(err) {
		t.Fatalf("a killed daemon should leave ENOTCONN (or, racing the teardown of its rings, ECONNABORTED or ECANCELED), got %v", err)
	}
	out, err := strata(s.args()...)
	if err != nil {
		t.Fatalf("mount over a dead mountpoint: %v: %s", err, out)
	}
	if !strings.Contains(out, "dead mount") {
		t.Errorf("no notice that a dead mount was cleared: %q", out)
	}
	if b, err := os.ReadFile(s.mnt + "/b"); err != nil || string(b) != "top b\n" {
		t.Fatalf("after recovery: %q, %v", b, err)
	}
	strata("umount", s.mnt)
}

func TestReadOnlyWithoutUpper(t *testing.T) {
	s := newStack(t)
	unmountAtEnd(t, s.mnt)
	if out, err := strata("mount", "--lower", s.l1, "--lower", s.l2, s.mnt); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	defer strata("umount", s.mnt)
	err := os.WriteFile(s.mnt+"/new", nil, 0o644)
	if !errors.Is(err, unix.EROFS) {
		t.Fatalf("write to a view with no upper: %v, want EROFS", err)
	}
}

// mount.fuse3 runs "strata SOURCE MOUNTPOINT -o OPTIONS", the program found
// on PATH; mount(8) and /etc/fstab go through it. mount(8) runs helpers
// with its default PATH, not the caller's, so the binary under test goes
// where that PATH looks first for the duration of the test.
func TestMountHelper(t *testing.T) {
	s := newStack(t)
	unmountAtEnd(t, s.mnt)
	const helper = "/usr/local/sbin/strata"
	if _, err := os.Lstat(helper); err == nil {
		t.Fatalf("%s exists: the test puts the binary under test there, move it aside", helper)
	}
	must(t, os.MkdirAll(filepath.Dir(helper), 0o755))
	must(t, os.Symlink(strataBin, helper))
	t.Cleanup(func() { os.Remove(helper) })
	opts := "lowerdir=" + s.l1 + ":" + s.l2 + ",upperdir=" + s.upper + ",workdir=" + s.work + ",nodev"
	cmd := exec.Command("mount", "-t", "fuse.strata", "strata", s.mnt, "-o", opts)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mount -t fuse.strata: %v: %s", err, out)
	}
	defer strata("umount", s.mnt)
	if b, err := os.ReadFile(s.mnt + "/a"); err != nil || string(b) != "lower a\n" {
		t.Fatalf("through the mount helper: %q, %v", b, err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mi), "\n") {
		if strings.Contains(line, " "+s.mnt+" ") && !strings.Contains(line, "nodev") {
			t.Errorf("nodev not applied: %s", line)
		}
	}
}

func TestUnknownOptionIsReported(t *testing.T) {
	s := newStack(t)
	unmountAtEnd(t, s.mnt)
	out, err := strata("mount", "-o", "lowerdir="+s.l1+":"+s.l2+",no_such_option=1", "--foreground=false", s.mnt)
	if err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	defer strata("umount", s.mnt)
	if !strings.Contains(out, `unknown option "no_such_option=1"`) {
		t.Errorf("unknown option not reported: %q", out)
	}
}

// Every refused stack gets a clear error and leaves the directories as
// they were.
func TestMountRefusals(t *testing.T) {
	s := newStack(t)
	unmountAtEnd(t, s.mnt)
	must(t, os.WriteFile(s.dir+"/file", nil, 0o644))
	foreignWork := s.dir + "/foreign"
	must(t, os.MkdirAll(foreignWork, 0o755))
	must(t, os.WriteFile(foreignWork+"/junk", []byte("keep"), 0o644))
	inside := s.l1 + "/sub"
	must(t, os.MkdirAll(inside, 0o755))
	otherFS := "/dev/shm"
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"missing layer", []string{"mount", "--lower", s.dir + "/nope", s.mnt}, "no such file"},
		{"layer not a dir", []string{"mount", "--lower", s.dir + "/file", s.mnt}, "not a directory"},
		{"missing upper", []string{"mount", "--lower", s.l1, "--upper", s.dir + "/nope", "--work", s.work, s.mnt}, "no such file"},
		{"upper without work", []string{"mount", "--lower", s.l1, "--upper", s.upper, s.mnt}, "needs a work directory"},
		{"upper and work on two filesystems", []string{"mount", "--lower", s.l1, "--upper", s.upper, "--work", otherFS, s.mnt}, "different filesystems"},
		{"foreign work dir", []string{"mount", "--lower", s.l1, "--upper", s.upper, "--work", foreignWork, s.mnt}, "did not make"},
		{"same dir twice", []string{"mount", "--lower", s.l1, "--lower", s.l1, s.mnt}, "twice"},
		{"upper is a lower", []string{"mount", "--lower", s.l1, "--upper", s.l1, "--work", s.work, s.mnt}, "twice"},
		{"mountpoint is a layer", []string{"mount", "--lower", s.l1, s.l1}, "deadlock"},
		{"mountpoint inside a layer", []string{"mount", "--lower", s.l1, "--lower", s.l2, inside}, "deadlock"},
		{"no layers", []string{"mount", s.mnt}, "no lower layer"},
	}
	for _, c := range cases {
		out, err := strata(c.args...)
		if err == nil {
			t.Errorf("%s: mount succeeded", c.name)
			strata("umount", s.mnt)
			continue
		}
		if !strings.Contains(out, c.want) {
			t.Errorf("%s: error %q does not say %q", c.name, out, c.want)
		}
		if isMounted(s.mnt) || isMounted(s.l1) || isMounted(inside) {
			t.Fatalf("%s: something was mounted", c.name)
		}
	}
	if b, err := os.ReadFile(foreignWork + "/junk"); err != nil || string(b) != "keep" {
		t.Errorf("the foreign work dir was touched: %q, %v", b, err)
	}
	if ents, _ := os.ReadDir(s.upper); len(ents) != 0 {
		t.Errorf("the upper dir was touched: %v", ents)
	}
}

// A file opened read-only before it is copied up keeps reading the lower
// content (strata's rule; kernel overlayfs since 4.19 moves the open file
// to the copy instead), new opens see the copy, and the lower file never
// changes, also with passthrough.
func TestOldOpenKeepsLowerContent(t *testing.T) {
	s := newStack(t)
	unmountAtEnd(t, s.mnt)
	if out, err := strata(s.args()...); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	defer strata("umount", s.mnt)
	old, err := os.Open(s.mnt + "/a")
	must(t, err)
	defer old.Close()
	first := make([]byte, 64)
	n, _ := old.ReadAt(first, 0)
	if string(first[:n]) != "lower a\n" {
		t.Fatalf("before copy-up: %q", first[:n])
	}
	must(t, os.WriteFile(s.mnt+"/a", []byte("NEW\n"), 0o644))
	n, _ = old.ReadAt(first, 0)
	if got := string(first[:n]); got != "lower a\n" {
		t.Errorf("old descriptor reads %q, want the lower content", got)
	}
	if b, _ := os.ReadFile(s.mnt + "/a"); string(b) != "NEW\n" {
		t.Errorf("a new open reads %q", b)
	}
	if b, _ := os.ReadFile(s.l2 + "/a"); string(b) != "lower a\n" {
		t.Errorf("the lower file changed: %q", b)
	}
	if b, _ := os.ReadFile(s.upper + "/a"); string(b) != "NEW\n" {
		t.Errorf("the upper copy holds %q", b)
	}
}

// Without /dev/fuse (hidden here by a tmpfs over /dev in a private mount
// namespace) the mount fails with a message that names the device.
func TestMissingDevFuse(t *testing.T) {
	s := newStack(t)
	unmountAtEnd(t, s.mnt)
	script := `mount -t tmpfs none /dev && exec "$0" "$@"`
	args := append([]string{"--mount", "--propagation", "private", "sh", "-c", script, strataBin}, s.args()...)
	out, err := exec.Command("unshare", args...).CombinedOutput()
	if err == nil {
		t.Fatalf("mount without /dev/fuse succeeded: %s", out)
	}
	if !strings.Contains(string(out), "/dev/fuse is missing") {
		t.Errorf("error does not name /dev/fuse: %s", out)
	}
	if ents, _ := os.ReadDir(s.upper); len(ents) != 0 {
		t.Errorf("the upper dir was touched: %v", ents)
	}
}
