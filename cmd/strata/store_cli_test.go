package main

// End-to-end tests of the store verbs: they run the real strata binary,
// built once in TestMain, against a store in a temporary directory, and
// mount with the real FUSE filesystem. Every mount is unmounted in
// t.Cleanup, and its daemon waited for, also when a test fails.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// strataBin is the strata binary TestMain builds from this package.
var strataBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "strata-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// The real path: the mount daemon runs as os.Executable(), which has
	// its symlinks resolved, and mountDaemon compares with it.
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	strataBin = filepath.Join(dir, "strata")
	if out, err := exec.Command(goTool(), "build", "-o", strataBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build strata: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// goTool finds the go command: on PATH, else in the toolchain that built
// this test.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// cli runs strata commands against one store.
type cli struct {
	t    *testing.T
	root string
}

func newCLI(t *testing.T) *cli {
	return &cli{t: t, root: filepath.Join(t.TempDir(), "store")}
}

// result is what one strata command did.
type result struct {
	args           []string
	stdout, stderr string
	err            error
}

func (r result) String() string {
	return fmt.Sprintf("strata %s: %v\nstdout: %s\nstderr: %s", strings.Join(r.args, " "), r.err, r.stdout, r.stderr)
}

// run runs strata with args; it never fails the test, so it may be called
// from any goroutine.
func (c *cli) run(args ...string) result {
	cmd := exec.Command(strataBin, args...)
	cmd.Env = append(os.Environ(), "STRATA_ROOT="+c.root)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return result{args: args, stdout: stdout.String(), stderr: stderr.String(), err: err}
}

// must runs strata and fails the test unless it succeeds; it returns stdout.
func (c *cli) must(args ...string) string {
	c.t.Helper()
	r := c.run(args...)
	if r.err != nil {
		c.t.Fatal(r)
	}
	return r.stdout
}

// refuse runs strata, expects it to fail with ErrInUse's text, and returns
// its stderr.
func (c *cli) refuse(args ...string) string {
	c.t.Helper()
	r := c.run(args...)
	if r.err == nil {
		c.t.Fatalf("strata %s succeeded; want a refusal\n%s", strings.Join(args, " "), r.stdout)
	}
	if !strings.Contains(r.stderr, "in use") {
		c.t.Fatalf("strata %s failed, but not as in use:\n%s", strings.Join(args, " "), r)
	}
	return r.stderr
}

// jsonOut runs a listing verb with --format json and decodes its output.
func (c *cli) jsonOut(v any, args ...string) {
	c.t.Helper()
	out := c.must(append(args, "--format", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		c.t.Fatalf("strata %s: output is not JSON: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// writeTree writes files (path -> content) under dir.
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for p, body := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// rootfs makes a small root filesystem directory whose content depends on
// tag, so two calls with different tags make different layers.
func rootfs(t *testing.T, tag string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "rootfs-"+tag)
	files := map[string]string{
		"etc/os-release":  "ID=" + tag + "\n",
		"etc/motd":        "hello from " + tag + "\n",
		"usr/bin/tool":    strings.Repeat(tag, 1000),
		"usr/share/doc/a": "doc a of " + tag,
	}
	for i := range 50 {
		files[fmt.Sprintf("usr/lib/%s/f%d", tag, i)] = strings.Repeat("x", 100*i)
	}
	writeTree(t, dir, files)
	return dir
}

// imageWithContainer imports a root filesystem as image name and creates a
// container of it called ctr.
func (c *cli) imageWithContainer(name, ctr string) {
	c.t.Helper()
	c.must("import", "--quiet", rootfs(c.t, ctr), "--name", name)
	c.must("create", name, "--name", ctr)
}

// mount runs "strata mount REF MNT" on a new directory and returns it once
// the mount is live. t.Cleanup unmounts it (if the test did not) with
// "strata umount" and waits until its daemon has exited.
func (c *cli) mount(ref string) string {
	c.t.Helper()
	mnt := filepath.Join(c.t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		c.t.Fatal(err)
	}
	c.must("mount", ref, mnt)
	pid, err := mountDaemon(mnt)
	if err != nil {
		unix.Unmount(mnt, unix.MNT_DETACH)
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { c.unmount(mnt, pid) })
	return mnt
}

// unmount runs "strata umount" if mnt is still mounted, then waits for the
// mount's daemon to exit.
func (c *cli) unmount(mnt string, pid int) {
	c.t.Helper()
	if mounted(c.t, mnt) {
		if r := c.run("umount", mnt); r.err != nil {
			c.t.Errorf("%v; detaching", r)
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	}
	if err := waitExit(pid); err != nil {
		c.t.Error(err)
	}
}

// mounted reports whether mnt is a mount point of this mount namespace.
func mounted(t *testing.T, mnt string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == mnt {
			return true
		}
	}
	return false
}

// mountDaemon finds the background process serving mnt: the strata binary
// run as "mount ... MNT" (startDaemon re-runs itself with the same args).
func mountDaemon(mnt string) (int, error) {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("list processes: %w", err)
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if err != nil {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(argv) > 2 && argv[0] == strataBin && argv[1] == "mount" && argv[len(argv)-1] == mnt {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no strata mount daemon serves %s", mnt)
}

// daemonExitBound is how long an unmounted daemon may take to exit before
// the test gives up on it, kills it and fails. It bounds a hang; it does
// not measure speed.
const daemonExitBound = 2 * time.Minute

// waitExit waits for a process that is not our child to exit, through a
// pidfd (readable once the process is gone).
func waitExit(pid int) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, int(daemonExitBound/time.Millisecond))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("wait for process %d: %w", pid, err)
		}
		if n == 0 {
			unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
			return fmt.Errorf("mount daemon %d still running %v after unmount; killed it", pid, daemonExitBound)
		}
		return nil
	}
}
