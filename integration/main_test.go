package integration

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/strata-fs/strata/runner"
	"golang.org/x/sys/unix"
)

// testRoot is the directory every temporary file of this test run lives
// under (TMPDIR points here, so t.TempDir() does too). Its name carries the
// pid of the test process, so a later run can tell a leftover of a killed
// run from the live directory of a concurrent one.
var testRoot string

// strataBin is the strata binary built once by TestMain.
var strataBin string

const testRootPrefix = "strata-it-"

func TestMain(m *testing.M) {
	if isHelperProcess() {
		os.Exit(runHelperProcess())
	}
	if os.Getenv(privateNamespaceEnv) == "" {
		os.Exit(reexecInPrivateMountNamespace())
	}
	os.Exit(runTests(m))
}

const privateNamespaceEnv = "STRATA_IT_IN_PRIVATE_MOUNT_NS"

// reexecInPrivateMountNamespace runs the test binary again in a new mount
// namespace with private propagation and returns its exit code. The mounts
// the tests make are then invisible to everything else on the machine:
// another program that creates a mount namespace meanwhile (container
// tests do) cannot take a copy of them, which would keep an unmounted
// overlay alive (index=on then refuses to mount its upper again: EBUSY) and
// a FUSE daemon serving. When the tests end, the namespace goes with them.
func reexecInPrivateMountNamespace() int {
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), privateNamespaceEnv+"=1")
	// Go makes "/" recursively private in the child when it unshares
	// CLONE_NEWNS.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	err = cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "re-exec in a private mount namespace:", err)
		return 1
	}
	return 0
}

func runTests(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "integration tests mount filesystems and must run as root")
		return 1
	}
	unix.Umask(0o022)
	detachInheritedCopies()
	detachLeftoversOfDeadRuns()
	mountFusectl()

	var err error
	testRoot, err = os.MkdirTemp("", fmt.Sprintf("%s%d-", testRootPrefix, os.Getpid()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// Short, fixed-depth paths keep kernel mount option strings small.
	os.Setenv("TMPDIR", testRoot)

	code := 0
	if sutName() == "strata" {
		if strataBin, err = buildStrata(testRoot); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	if code == 0 {
		code = m.Run()
	}
	if err := checkNothingLeftBehind(testRoot); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		code = 1
	}
	os.RemoveAll(testRoot)
	return code
}

// mountFusectl makes /sys/fs/fuse/connections usable (in this private
// mount namespace only), so the hang guard can abort a FUSE connection.
func mountFusectl() {
	const dir = "/sys/fs/fuse/connections"
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return
	}
	if err := unix.Mount("fusectl", dir, "fusectl", 0, ""); err != nil && err != unix.EBUSY {
		fmt.Fprintf(os.Stderr, "note: cannot mount fusectl on %s (%v); a hung daemon is killed instead\n", dir, err)
	}
}

// buildStrata builds ./cmd/strata into dir and returns the binary's path.
func buildStrata(dir string) (string, error) {
	bin := filepath.Join(dir, "strata")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/strata")
	cmd.Dir = moduleRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/strata: %v\n%s", err, out)
	}
	return bin, nil
}

// moduleRoot is the repository root: the tests run in integration/.
func moduleRoot() string {
	wd, err := os.Getwd()
	if err != nil {
		panic(err)
	}
	return filepath.Dir(wd)
}

// checkNothingLeftBehind fails if a mount or a process of this run is still
// there. It cleans them up as well (lazy unmount, SIGKILL), since this run
// made them, so the machine is usable afterwards, but the run still fails.
func checkNothingLeftBehind(root string) error {
	var problems []string
	mounts := mountsUnder(root)
	for i := len(mounts) - 1; i >= 0; i-- {
		problems = append(problems, "mount left behind: "+mounts[i])
		unix.Unmount(mounts[i], unix.MNT_DETACH)
	}
	for _, pid := range processesMentioning(root) {
		problems = append(problems, fmt.Sprintf("process left behind: pid %d: %s", pid, processCmdline(pid)))
		unix.Kill(pid, unix.SIGKILL)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "\n"))
	}
	return nil
}

// detachInheritedCopies drops, in this package's private mount namespace,
// the copies of FUSE and overlay mounts it inherited. A copy keeps the
// original's filesystem alive: a FUSE mount that another program (another
// test package running in parallel) unmounts meanwhile would not end
// until these tests do (a fuseloop test's unmount waited 34 s for it).
// Only this namespace's copies go; the originals are untouched.
func detachInheritedCopies() {
	mounts := readMountInfo()
	for i := len(mounts) - 1; i >= 0; i-- {
		if t := mounts[i].fsType; t == "fuse" || t == "fuseblk" || strings.HasPrefix(t, "fuse.") || t == "overlay" {
			unix.Unmount(mounts[i].mountPoint, unix.MNT_DETACH)
		}
	}
}

// detachLeftoversOfDeadRuns lazily unmounts what an earlier run, killed
// before its cleanups ran (go test -timeout does that), left mounted, kills
// its daemons and removes its directory. Only
// directories whose owning test process is gone are touched, so a
// concurrent run of this package is left alone.
func detachLeftoversOfDeadRuns() {
	tmp := os.TempDir()
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, ok := pidOfTestRoot(e.Name())
		if !ok || processAlive(pid) {
			continue
		}
		dir := filepath.Join(tmp, e.Name())
		mounts := mountsUnder(dir)
		for i := len(mounts) - 1; i >= 0; i-- {
			fmt.Fprintf(os.Stderr, "detaching leftover mount of dead run %d: %s\n", pid, mounts[i])
			unix.Unmount(mounts[i], unix.MNT_DETACH)
		}
		for _, p := range processesMentioning(dir) {
			unix.Kill(p, unix.SIGKILL)
		}
		if len(mountsUnder(dir)) == 0 {
			os.RemoveAll(dir)
		}
	}
}

func pidOfTestRoot(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, testRootPrefix)
	if !ok {
		return 0, false
	}
	pidText, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(pidText)
	return pid, err == nil
}

func processAlive(pid int) bool {
	return runner.Running(pid)
}
