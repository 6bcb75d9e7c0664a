package target

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// commandTimeout bounds a mount or unmount command; a 1,000-layer mount may
// take a while, a hung one must not stall a benchmark run forever.
const commandTimeout = 3 * time.Minute

func mountFuseOverlayfs(bin string, spec Spec) (*Mount, error) {
	if bin == "" {
		bin = "fuse-overlayfs"
	}
	for _, p := range append([]string{spec.Upper, spec.Work}, spec.Lowers...) {
		if strings.ContainsAny(p, ":,") {
			return nil, fmt.Errorf("path %q holds ':' or ',' which fuse-overlayfs options cannot carry", p)
		}
	}
	opts := "lowerdir=" + strings.Join(spec.Lowers, ":") + ",upperdir=" + spec.Upper + ",workdir=" + spec.Work
	args := []string{"-o", opts, spec.Dir}
	return mountFuse(spec.Dir, bin, args, func() error { return unmountDir(spec.Dir) })
}

func mountStrata(bin string, spec Spec) (*Mount, error) {
	if bin == "" {
		return nil, errors.New("no strata binary given")
	}
	args := []string{"mount"}
	for _, l := range spec.Lowers {
		args = append(args, "--lower", l)
	}
	args = append(args, "--upper", spec.Upper, "--work", spec.Work, spec.Dir)
	umount := func() error {
		out, err := runCommand(bin, "umount", spec.Dir)
		if err == nil {
			return nil
		}
		// Fall back to the kernel so the mount never outlives the run.
		if uerr := unmountDir(spec.Dir); uerr != nil {
			return fmt.Errorf("strata umount: %w (%s); %w", err, out, uerr)
		}
		return nil
	}
	return mountFuse(spec.Dir, bin, args, umount)
}

// mountFuse runs a mount command that returns once the mount is live (the
// daemon keeps running in the background), checks the mount is there and
// finds the daemon.
func mountFuse(dir, bin string, args []string, umount func() error) (*Mount, error) {
	before := fuseDeviceHolders()
	out, err := runCommand(bin, args...)
	if err != nil {
		if _, mounted := fsType(dir); mounted {
			err = errors.Join(err, umount())
		}
		if out != "" {
			err = fmt.Errorf("%w: %s", err, out)
		}
		return nil, fmt.Errorf("%s %s: %w", filepath.Base(bin), args[0], err)
	}
	if err := waitMounted(dir, 10*time.Second); err != nil {
		return nil, fmt.Errorf("%s returned but: %w (output: %s)", filepath.Base(bin), err, out)
	}
	pid := findDaemon(dir, out, before)
	m := &Mount{DaemonPID: pid}
	m.unmount = func() error {
		err := umount()
		if pid != 0 {
			waitExit(pid, 30*time.Second)
		}
		return err
	}
	return m, nil
}

func runCommand(bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}

// fsType reports the filesystem type mounted at dir, if dir is a
// mountpoint.
func fsType(dir string) (string, bool) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", false
	}
	fstype, found := "", false
	for _, line := range strings.Split(string(b), "\n") {
		// id parent major:minor root mountpoint options ... - fstype source super
		fields := strings.Fields(line)
		if len(fields) < 5 || unescapeMountinfo(fields[4]) != dir {
			continue
		}
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) {
				fstype, found = fields[i+1], true // the last one listed is on top
			}
		}
	}
	return fstype, found
}

// unescapeMountinfo undoes the octal escapes (\040 for space, ...) of
// /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// IsMounted reports whether dir is a mountpoint.
func IsMounted(dir string) bool {
	_, ok := fsType(dir)
	return ok
}

func waitMounted(dir string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if t, ok := fsType(dir); ok && strings.HasPrefix(t, "fuse") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no FUSE mount at %s after %v", dir, limit)
		}
		sleep(20)
	}
}

var printedPID = regexp.MustCompile(`(?i)\bpid[ =:]+(\d+)`)

// findDaemon finds the process serving the FUSE mount at dir: a pid the
// mount command printed, else a process holding /dev/fuse whose command line
// names dir, else the only process that started holding /dev/fuse during
// the mount. It returns 0 when none of these is conclusive.
func findDaemon(dir, output string, before map[int]bool) int {
	holders := fuseDeviceHolders()
	if m := printedPID.FindStringSubmatch(output); m != nil {
		if pid, err := strconv.Atoi(m[1]); err == nil && holders[pid] {
			return pid
		}
	}
	var fresh []int
	for pid := range holders {
		if commandLineNames(pid, dir) {
			return pid
		}
		if !before[pid] {
			fresh = append(fresh, pid)
		}
	}
	if len(fresh) == 1 {
		return fresh[0]
	}
	return 0
}

func commandLineNames(pid int, dir string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	for _, arg := range strings.Split(string(b), "\x00") {
		if arg == dir || strings.HasSuffix(arg, "="+dir) {
			return true
		}
	}
	return false
}

// fuseDeviceHolders lists the processes with /dev/fuse open.
func fuseDeviceHolders() map[int]bool {
	holders := map[int]bool{}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return holders
	}
	self := os.Getpid()
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
			if err == nil && link == "/dev/fuse" {
				holders[pid] = true
				break
			}
		}
	}
	return holders
}

// waitExit waits for a daemon to exit after its unmount. One that lingers
// (fuse-overlayfs may spend minutes freeing a 1,000-layer stack) is
// terminated, then killed, with a warning, so the next measurement starts on
// a quiet machine; the mount itself is already gone, so that is no error.
func waitExit(pid int, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for alive(pid) {
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "warning: FUSE daemon %d still running %v after its unmount; terminating it\n", pid, limit)
			_ = syscall.Kill(pid, syscall.SIGTERM)
			sleep(2000)
			if alive(pid) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			return
		}
		sleep(20)
	}
}

// alive reports whether pid runs and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func sleep(ms int) { time.Sleep(time.Duration(ms) * time.Millisecond) }
