package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// stackDirs are the directories one union mount is made of.
type stackDirs struct {
	lowers []string // topmost first
	upper  string   // "" for a read-only view
	work   string
}

// target is one implementation of the union view: the kernel's overlayfs
// (the oracle) or a system under test.
type target interface {
	name() string
	// mount mounts dirs on mnt and returns once the mount is live.
	mount(dirs stackDirs, mnt string, logFile string) error
	// unmount unmounts mnt the target's ordinary way (not lazily).
	unmount(mnt string) error
}

// oracleOptions are the kernel overlayfs features strata's semantics are
// modelled on: redirect_dir (directory rename), metacopy (metadata-only
// copy-up) and index (hard links stay linked after copy-up, stable inode
// numbers). The kernel accepts this combination with nfs_export off, which
// is its default.
var oracleOptions = []string{"redirect_dir=on", "metacopy=on", "index=on"}

func oracleTarget() target { return kernelOverlay{options: oracleOptions} }

// sutName is the system under test: $STRATA_SUT, default "strata".
func sutName() string {
	if s := os.Getenv("STRATA_SUT"); s != "" {
		return s
	}
	return "strata"
}

func sutTarget(t testing.TB) target {
	switch sutName() {
	case "strata":
		return strataTarget{bin: strataBin}
	case "fuse-overlayfs":
		return fuseOverlayfs{}
	case "kernel":
		// The oracle against itself: a harness self-check.
		return oracleTarget()
	}
	t.Fatalf("STRATA_SUT=%q: want strata, fuse-overlayfs or kernel", sutName())
	return nil
}

// kernelOverlay mounts with the new mount API (fsopen/fsconfig), which has
// no one-page limit on the option string and so takes up to the kernel's
// 500 lower layers.
type kernelOverlay struct{ options []string }

func (kernelOverlay) name() string { return "kernel-overlayfs" }

func (k kernelOverlay) mount(d stackDirs, mnt, _ string) error {
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("fsopen overlay: %w", err)
	}
	defer unix.Close(fsfd)
	fail := func(what string, err error) error {
		return fmt.Errorf("overlay %s: %w %s", what, err, readFsContextLog(fsfd))
	}
	if err := unix.FsconfigSetString(fsfd, "source", "overlay"); err != nil {
		return fail("source", err)
	}
	for _, l := range d.lowers {
		if err := unix.FsconfigSetString(fsfd, "lowerdir+", l); err != nil {
			return fail("lowerdir+ "+l, err)
		}
	}
	if d.upper != "" {
		if err := unix.FsconfigSetString(fsfd, "upperdir", d.upper); err != nil {
			return fail("upperdir", err)
		}
		if err := unix.FsconfigSetString(fsfd, "workdir", d.work); err != nil {
			return fail("workdir", err)
		}
	}
	for _, o := range k.options {
		key, value, hasValue := strings.Cut(o, "=")
		if hasValue {
			err = unix.FsconfigSetString(fsfd, key, value)
		} else {
			err = unix.FsconfigSetFlag(fsfd, key)
		}
		if err != nil {
			return fail(o, err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fail("create", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0)
	if err != nil {
		return fail("fsmount", err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, mnt, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount to %s: %w", mnt, err)
	}
	return nil
}

func (kernelOverlay) unmount(mnt string) error { return unix.Unmount(mnt, 0) }

// readFsContextLog drains the kernel's messages about a failed fsconfig.
func readFsContextLog(fsfd int) string {
	var msgs []string
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(fsfd, buf)
		if err != nil || n <= 0 {
			break
		}
		msgs = append(msgs, string(buf[:n]))
	}
	return strings.Join(msgs, "; ")
}

// strataTarget runs the strata binary built by TestMain, with the mount
// options given (-o), and with at most fileLimit open descriptors if
// that is set (prlimit lowers both the soft and the hard limit, which the
// daemon would otherwise raise the soft one to).
type strataTarget struct {
	bin       string
	options   []string
	fileLimit int
}

func (strataTarget) name() string { return "strata" }

func (s strataTarget) mount(d stackDirs, mnt, logFile string) error {
	args := []string{"mount"}
	for _, l := range d.lowers {
		args = append(args, "--lower", l)
	}
	if d.upper != "" {
		args = append(args, "--upper", d.upper, "--work", d.work)
	}
	if len(s.options) > 0 {
		args = append(args, "-o", strings.Join(s.options, ","))
	}
	args = append(args, mnt)
	if s.fileLimit > 0 {
		limit := fmt.Sprintf("--nofile=%d:%d", s.fileLimit, s.fileLimit)
		return runLogged(logFile, "prlimit", append([]string{limit, "--", s.bin}, args...)...)
	}
	return runLogged(logFile, s.bin, args...)
}

func (s strataTarget) unmount(mnt string) error {
	return runLogged("", s.bin, "umount", mnt)
}

// fuseOverlayfs is the stand-in system under test that proves the harness
// finds real differences.
type fuseOverlayfs struct{}

func (fuseOverlayfs) name() string { return "fuse-overlayfs" }

func (fuseOverlayfs) mount(d stackDirs, mnt, logFile string) error {
	opts := "lowerdir=" + strings.Join(d.lowers, ":")
	if d.upper != "" {
		opts += ",upperdir=" + d.upper + ",workdir=" + d.work
	}
	return runLogged(logFile, "fuse-overlayfs", "-o", opts, mnt)
}

func (fuseOverlayfs) unmount(mnt string) error {
	return runLogged("", "fusermount3", "-u", mnt)
}

// runLogged runs a command whose output goes to logFile (or a temporary
// file). A file, not a pipe: a daemon that inherits the output must not
// keep the command from returning.
func runLogged(logFile, name string, args ...string) error {
	var out *os.File
	var err error
	if logFile != "" {
		out, err = os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	} else {
		out, err = os.CreateTemp("", "cmd-*.log")
	}
	if err != nil {
		return err
	}
	defer out.Close()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		tail, _ := os.ReadFile(out.Name())
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, lastLines(string(tail), 20))
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// view is one live (or unmounted) union mount made by a test.
type view struct {
	t       testing.TB
	target  target
	dirs    stackDirs
	mnt     string
	log     string
	daemons []int
	mounted bool
	// fuseConn is the FUSE connection number (the minor device number),
	// "" for a kernel overlay mount.
	fuseConn string
	// hung names the operation that tripped the hang guard, if any.
	hung string
}

// hangGuard bounds how long one operation on a mount may block before the
// harness aborts the FUSE connection, so a deadlocked daemon fails one test
// with a clear message instead of stalling the whole run. It is a guard
// against hangs, not a timing assertion.
const hangGuard = 60 * time.Second

// guarded runs fn; if it has not returned after hangGuard, the view's FUSE
// connection is aborted (pending and later requests fail with ENOTCONN)
// and v.hung records what hung.
func (v *view) guarded(what string, fn func()) { v.guardedFor(hangGuard, what, fn) }

// guardedFor is guarded with a longer bound, for whole workloads.
func (v *view) guardedFor(bound time.Duration, what string, fn func()) {
	timer := time.AfterFunc(bound, func() { v.abort(what) })
	defer timer.Stop()
	fn()
}

// abort ends the FUSE connection from the kernel side and kills the daemon.
func (v *view) abort(what string) {
	v.hung = what
	if v.fuseConn != "" {
		os.WriteFile(filepath.Join("/sys/fs/fuse/connections", v.fuseConn, "abort"), []byte("1"), 0)
	}
	for _, pid := range v.daemons {
		unix.Kill(pid, unix.SIGKILL)
	}
}

// mountView mounts dirs with tg on a fresh mount point and registers its
// unmount with t.Cleanup, which runs also when the test fails or panics.
func mountView(t testing.TB, tg target, dirs stackDirs) *view {
	t.Helper()
	base := t.TempDir()
	v := &view{t: t, target: tg, dirs: dirs, mnt: filepath.Join(base, "mnt"), log: filepath.Join(base, "daemon.log")}
	if err := os.Mkdir(v.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := v.unmount(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if t.Failed() {
			v.logDaemonOutput()
		}
	})
	if err := v.mount(); err != nil {
		t.Fatal(err)
	}
	return v
}

func (v *view) mount() error {
	err := v.target.mount(v.dirs, v.mnt, v.log)
	if mi, ok := mountAt(v.mnt); ok {
		v.mounted = true
		v.daemons = processesWithArg(v.mnt)
		if strings.HasPrefix(mi.fsType, "fuse") {
			_, v.fuseConn, _ = strings.Cut(mi.dev, ":")
		}
	}
	if err != nil {
		return fmt.Errorf("%s mount: %w", v.target.name(), err)
	}
	if !v.mounted {
		return fmt.Errorf("%s mount returned but %s is not in /proc/self/mountinfo", v.target.name(), v.mnt)
	}
	return nil
}

// unmount unmounts the view the target's way, falls back to umount(2) and
// at last to a lazy detach, then waits for the daemon to exit. Any
// fallback is reported as an error.
func (v *view) unmount() error {
	if !v.mounted {
		return nil
	}
	v.mounted = false
	var problems []string
	if err := v.target.unmount(v.mnt); err != nil {
		problems = append(problems, fmt.Sprintf("%s unmount: %v", v.target.name(), err))
		if _, still := mountAt(v.mnt); still {
			if err := unix.Unmount(v.mnt, 0); err != nil {
				problems = append(problems, fmt.Sprintf("umount(2): %v; detaching lazily", err))
				unix.Unmount(v.mnt, unix.MNT_DETACH)
			}
		}
	}
	if mi, still := mountAt(v.mnt); still {
		problems = append(problems, fmt.Sprintf("%s still mounted (%s) after unmount; detaching lazily", v.mnt, mi.fsType))
		unix.Unmount(v.mnt, unix.MNT_DETACH)
	}
	for _, pid := range v.daemons {
		if err := waitProcessExit(pid); err != nil {
			problems = append(problems, err.Error())
		}
	}
	v.daemons = nil
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "\n"))
	}
	return nil
}

// logDaemonOutput shows the end of what the mount command and its daemon
// wrote, to explain a failure.
func (v *view) logDaemonOutput() {
	data, err := os.ReadFile(v.log)
	if err != nil || len(data) == 0 {
		return
	}
	v.t.Logf("%s output (%s), last lines:\n%s", v.target.name(), v.mnt, lastLines(string(data), 30))
}

// remount unmounts and mounts the same directories again.
func (v *view) remount() error {
	if err := v.unmount(); err != nil {
		return err
	}
	return v.mount()
}

// processesWithArg lists the pids with an argument exactly equal to arg, or
// an option list (a,b=c) holding it.
func processesWithArg(arg string) []int {
	var pids []int
	for _, pid := range processesMentioning(arg) {
		data, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		for _, a := range strings.Split(string(data), "\x00") {
			if a == arg {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// daemonExitTimeoutMs bounds the wait for a daemon to exit after its mount
// is gone. It is a hang guard, not a measurement.
const daemonExitTimeoutMs = 60_000

// waitProcessExit waits (pidfd + poll, no sleeping loop) for pid to exit,
// and kills it if it does not.
func waitProcessExit(pid int) error {
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
		n, err := unix.Poll(fds, daemonExitTimeoutMs)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll pidfd %d: %w", pid, err)
		}
		if n > 0 {
			return nil
		}
		cmdline := processCmdline(pid)
		unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
		return fmt.Errorf("daemon %d (%s) did not exit after unmount; killed", pid, cmdline)
	}
}
