package runner

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary is also the container's init (re-executed through
// /proc/self/exe with InitVerb, as the strata binary is) and, for the
// signal test, a stand-in for "strata run" (runHelperVerb).
const runHelperVerb = "__runner_test_run"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case InitVerb:
			os.Exit(Init())
		case runHelperVerb:
			os.Exit(runHelper())
		}
	}
	os.Exit(m.Run())
}

// helperSpec is the part of a Spec the run helper takes from its
// environment; its streams are its own.
type helperSpec struct {
	Rootfs, StateDir string
	Args             []string
	Tty              bool
}

const helperSpecEnv = "STRATA_RUNNER_TEST_SPEC"

// runHelper does what "strata run" does: Run, with this process's signals
// forwarded, exiting with the command's code.
func runHelper() int {
	var hs helperSpec
	if err := json.Unmarshal([]byte(os.Getenv(helperSpecEnv)), &hs); err != nil {
		fmt.Fprintln(os.Stderr, "run helper:", err)
		return 125
	}
	code, err := Run(Spec{
		Rootfs: hs.Rootfs, StateDir: hs.StateDir, Args: hs.Args, Hostname: "testbox", Tty: hs.Tty,
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "run helper:", err)
		return 125
	}
	return code
}

var (
	debianOnce sync.Once
	debianPath string
	debianErr  error
)

// debianRoot is the cached debootstrap minbase tree that .ci/debian-rootfs.sh
// builds (once; it takes minutes and the network the first time).
func debianRoot(t *testing.T) string {
	t.Helper()
	debianOnce.Do(func() {
		out, err := exec.Command("../.ci/debian-rootfs.sh").Output()
		if err != nil {
			debianErr = fmt.Errorf("../.ci/debian-rootfs.sh: %w", err)
			if ee, ok := err.(*exec.ExitError); ok {
				debianErr = fmt.Errorf("%w: %s", debianErr, ee.Stderr)
			}
			return
		}
		debianPath = strings.TrimSpace(string(out))
	})
	if debianErr != nil {
		t.Fatalf("the Debian test root is not available: %v", debianErr)
	}
	return debianPath
}

// view is a writable root for one test: a kernel overlayfs mount of the
// Debian tree (lower) with a fresh upper layer, as the union view will be.
type view struct {
	Merged, Upper string
}

func newView(t *testing.T) view {
	t.Helper()
	lower := debianRoot(t)
	dir := t.TempDir()
	v := view{Merged: filepath.Join(dir, "merged"), Upper: filepath.Join(dir, "upper")}
	work := filepath.Join(dir, "work")
	for _, d := range []string{v.Merged, v.Upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, v.Upper, work)
	if err := unix.Mount("overlay", v.Merged, "overlay", 0, opts); err != nil {
		t.Fatalf("mounting the test view: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(v.Merged, 0); err != nil {
			t.Errorf("unmounting the test view: %v", err)
			_ = unix.Unmount(v.Merged, unix.MNT_DETACH)
		}
		if mounts := hostMountsAtOrBelow(t, v.Merged); len(mounts) != 0 {
			t.Errorf("still mounted on the host after the test: %v", mounts)
		}
	})
	return v
}

// spec is a Spec for the view with the test's defaults.
func (v view) spec(t *testing.T, args ...string) Spec {
	return Spec{Rootfs: v.Merged, StateDir: t.TempDir(), Args: args, Hostname: "testbox"}
}

// result is what a finished container left.
type result struct {
	Code           int
	Stdout, Stderr string
}

// run runs spec to the end, capturing output, and checks that nothing of
// the run is left on the host.
func run(t *testing.T, spec Spec) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if spec.Stdout == nil {
		spec.Stdout = &stdout
	}
	if spec.Stderr == nil {
		spec.Stderr = &stderr
	}
	p := start(t, spec)
	pidNS := pidNamespaceOf(p.Pid())
	code, err := p.Wait()
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	assertNothingLeft(t, spec.Rootfs, p.Pid(), pidNS)
	return result{Code: code, Stdout: stdout.String(), Stderr: stderr.String()}
}

// start starts spec and makes sure the container is gone when the test
// ends, whether or not it got to Wait.
func start(t *testing.T, spec Spec) *Process {
	t.Helper()
	p, err := Start(spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.Signal(unix.SIGKILL)
			_, _ = p.Wait()
		}
	})
	return p
}

// pidNamespaceOf is the PID namespace a process is in ("pid:[N]"), or ""
// when the process has already exited.
func pidNamespaceOf(pid int) string {
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	if err != nil {
		return ""
	}
	return ns
}

// assertNothingLeft checks that the init is gone, that no host process is
// in the container's PID namespace any more, and that nothing is mounted on
// the host below the view.
func assertNothingLeft(t *testing.T, rootfs string, initPid int, pidNS string) {
	t.Helper()
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", initPid)); err == nil {
		t.Errorf("the init (pid %d) still exists after Wait", initPid)
	}
	if pidNS != "" {
		if pids := processesInNamespace(pidNS); len(pids) != 0 {
			t.Errorf("processes %v are still in the container's %s", pids, pidNS)
		}
	}
	for _, m := range hostMountsAtOrBelow(t, rootfs) {
		if m != rootfs {
			t.Errorf("%s is mounted on the host after the run", m)
		}
	}
}

// processesInNamespace lists the processes of pidNS that have not ended.
// Zombies do not count: when the container's init ends, the kernel kills
// the rest of the namespace, and each stays a zombie until the process
// that inherits it reaps it, which is the host's init and on some
// machines late (1-1.5 s on the test VMs).
func processesInNamespace(pidNS string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pidNamespaceOf(pid) == pidNS && Running(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// hostMountsAtOrBelow lists the host's mount points at or below dir.
func hostMountsAtOrBelow(t *testing.T, dir string) []string {
	t.Helper()
	var found []string
	for _, mp := range mountPoints(t, "/proc/self/mountinfo") {
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			found = append(found, mp)
		}
	}
	return found
}

// mountPoints reads the mount point column of a mountinfo file.
func mountPoints(t *testing.T, mountinfo string) []string {
	t.Helper()
	data, err := os.ReadFile(mountinfo)
	if err != nil {
		t.Fatal(err)
	}
	return mountPointsOf(string(data))
}

func mountPointsOf(mountinfo string) []string {
	var points []string
	for _, line := range strings.Split(strings.TrimSpace(mountinfo), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 4 {
			points = append(points, unescapeMountinfo(fields[4]))
		}
	}
	return points
}

// unescapeMountinfo undoes the octal escapes (\040 for space) of mountinfo.
func unescapeMountinfo(s string) string {
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

// startRunHelper starts the "strata run" stand-in for hs with the given
// stdio and kills it at the end of the test if it is still running (its
// init then dies by Pdeathsig). Extra SysProcAttr settings come from attr.
func startRunHelper(t *testing.T, hs helperSpec, stdio *os.File, attr *syscall.SysProcAttr) *exec.Cmd {
	t.Helper()
	encoded, err := json.Marshal(hs)
	if err != nil {
		t.Fatal(err)
	}
	helper := exec.Command(os.Args[0], runHelperVerb)
	helper.Env = append(os.Environ(), helperSpecEnv+"="+string(encoded))
	helper.Stdin, helper.Stdout, helper.Stderr = stdio, stdio, stdio
	helper.SysProcAttr = attr
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if helper.ProcessState == nil {
			_ = helper.Process.Kill()
			_ = helper.Wait()
		}
	})
	return helper
}

// waitForLine reads lines from r until one ends with want (a terminal may
// echo "^C" in front of it), failing the test
// clearly if the stream ends first or nothing comes for a generous while
// (a hang, not a slow machine). It returns everything read.
func waitForLine(t *testing.T, r *bufio.Reader, want string) string {
	t.Helper()
	type line struct {
		text string
		err  error
	}
	var seen strings.Builder
	for {
		next := make(chan line, 1)
		go func() {
			text, err := r.ReadString('\n')
			next <- line{text, err}
		}()
		select {
		case l := <-next:
			seen.WriteString(l.text)
			if strings.HasSuffix(strings.TrimSpace(l.text), want) {
				return seen.String()
			}
			if l.err != nil {
				t.Fatalf("output ended before %q; got %q (%v)", want, seen.String(), l.err)
			}
		case <-time.After(2 * time.Minute):
			t.Fatalf("no %q from the container after two minutes; got %q", want, seen.String())
		}
	}
}
