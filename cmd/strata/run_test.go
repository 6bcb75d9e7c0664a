package main

// End-to-end tests of strata run, ps, logs, stop and kill: the built binary
// (strataBin, from TestMain) runs commands in containers of a real Debian
// image, the minbase tree that .ci/debian-rootfs.sh caches.
//
// Importing that tree takes seconds, so it is imported once per test binary
// into one store in TestMain's temporary directory (removed when the binary
// ends), and every test makes its own, uniquely named containers in it.
// The tests do not run in parallel: each one ends by checking that nothing
// of its runs is left on the host, which it can only tell apart from another
// test's runs if they do not overlap.

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// debianTreeDefault is where .ci/debian-rootfs.sh caches the Debian tree;
// STRATA_DEBIAN_ROOTFS overrides it (CI sets it to the script's output).
const debianTreeDefault = "/var/cache/strata-test/bookworm-minbase"

// debianImage is the Debian tree's name in the shared store.
const debianImage = "debian-test:bookworm"

// runWait bounds each wait for a container to get somewhere (output to
// appear, a run to end, a daemon to exit). It catches a hang and fails with
// a message; it never measures speed, so it is generous.
const runWait = 2 * time.Minute

// debianStore is the store shared by the run tests, made on first use.
var debianStore struct {
	once       sync.Once
	root, tree string
	err        error
}

// runEnv is one test's handle on the shared store.
type runEnv struct {
	*cli
	tree string // the Debian tree the image was imported from
}

// newRunEnv returns the shared store, importing the Debian image on first
// use, and checks when the test ends (failed or not) that nothing of its
// runs is left on the host, cleaning up whatever is.
func newRunEnv(t *testing.T) *runEnv {
	t.Helper()
	debianStore.once.Do(func() {
		debianStore.root, debianStore.tree, debianStore.err = importDebian()
	})
	if debianStore.err != nil {
		t.Fatal(debianStore.err)
	}
	e := &runEnv{cli: &cli{t: t, root: debianStore.root}, tree: debianStore.tree}
	t.Cleanup(func() { checkNothingLeft(t, e.root) })
	return e
}

// importDebian imports the cached Debian tree as debianImage into a new
// store next to strataBin, which TestMain removes at the end.
func importDebian() (root, tree string, err error) {
	tree = os.Getenv("STRATA_DEBIAN_ROOTFS")
	if tree == "" {
		tree = debianTreeDefault
	}
	if err := unix.Access(filepath.Join(tree, "bin/sh"), unix.X_OK); err != nil {
		return "", "", fmt.Errorf("the Debian test tree is missing (%s/bin/sh: %v): run .ci/debian-rootfs.sh once "+
			"(it needs debootstrap and the network), or point STRATA_DEBIAN_ROOTFS at such a tree", tree, err)
	}
	root = filepath.Join(filepath.Dir(strataBin), "run-store")
	c := &cli{root: root}
	if r := c.run("import", "--quiet", tree, "--name", debianImage); r.err != nil {
		return "", "", fmt.Errorf("importing the Debian tree: %v", r)
	}
	return root, tree, nil
}

// ctrSeq numbers the containers the tests create, so names never collide
// in the shared store.
var ctrSeq atomic.Int64

var notInName = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// newName is a container name that says which test made it.
func newName(t *testing.T) string {
	return fmt.Sprintf("%s-%d", notInName.ReplaceAllString(t.Name(), "-"), ctrSeq.Add(1))
}

// runCtr runs "strata run --name NAME ARGS..." in the foreground to its end
// and returns the new container's name and what the run did.
func (e *runEnv) runCtr(args ...string) (string, result) {
	name := newName(e.t)
	return name, e.run(append([]string{"run", "--name", name}, args...)...)
}

// output runs "strata run ARGS..." and fails the test unless the command
// exits 0; it returns the command's standard output.
func (e *runEnv) output(args ...string) string {
	e.t.Helper()
	_, r := e.runCtr(args...)
	if r.err != nil {
		e.t.Fatal(r)
	}
	return r.stdout
}

// exitCode is the exit status of a finished strata command (-1 if it could
// not be run or did not exit).
func exitCode(r result) int {
	var ee *exec.ExitError
	if errors.As(r.err, &ee) {
		return ee.ExitCode()
	}
	if r.err != nil {
		return -1
	}
	return 0
}

func TestRunPrintsTheImagesFile(t *testing.T) {
	e := newRunEnv(t)
	want, err := os.ReadFile(filepath.Join(e.tree, "etc/debian_version"))
	must(t, err)
	if got := e.output(debianImage, "cat", "/etc/debian_version"); got != string(want) {
		t.Errorf("cat /etc/debian_version printed %q; want the image's %q", got, want)
	}
	// The host's debian_version may have the same content: a host file
	// (the strata binary) must not be there at all.
	if _, r := e.runCtr(debianImage, "test", "-e", strataBin); exitCode(r) != 1 {
		t.Errorf("test -e %s (a host file) in the container: want exit 1 (absent)\n%s", strataBin, r)
	}
}

func TestRunHostname(t *testing.T) {
	e := newRunEnv(t)
	if got := e.output("-h", "box-under-test", debianImage, "hostname"); got != "box-under-test\n" {
		t.Errorf("hostname printed %q; want the -h value", got)
	}
}

// Exit codes as shells give them, and clear errors for what cannot run.
func TestRunExitCodes(t *testing.T) {
	cases := []struct {
		name     string
		args     []string
		code     int
		inStderr string // "" if the command's stderr is not checked
	}{
		{"exit status passes through", []string{debianImage, "sh", "-c", "exit 42"}, 42, ""},
		{"command not found", []string{debianImage, "no-such-command"}, 127, "not found"},
		{"not executable", []string{debianImage, "/etc/debian_version"}, 126, "permission denied"},
		{"volume source missing", []string{"-v", "/nonexistent/strata-test:/mnt", debianImage, "true"}, exitRunFailed, "/nonexistent/strata-test"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newRunEnv(t)
			_, r := e.runCtr(tc.args...)
			if exitCode(r) != tc.code {
				t.Fatalf("want exit %d\n%s", tc.code, r)
			}
			if !strings.Contains(r.stderr, tc.inStderr) {
				t.Errorf("stderr does not say %q\n%s", tc.inStderr, r)
			}
		})
	}
}

func TestRunImageNotFound(t *testing.T) {
	e := newRunEnv(t)
	_, r := e.runCtr("no-such-image", "true")
	if r.err == nil || !strings.Contains(r.stderr, "neither a container nor an image") {
		t.Fatalf("want a clear error for an image that does not exist\n%s", r)
	}
}

// A file written in the container is in its diff and its commit; the
// generated /etc files and a volume never are, even when written to.
func TestRunDiffAndCommit(t *testing.T) {
	e := newRunEnv(t)
	vol := t.TempDir()
	writeTree(t, vol, map[string]string{"from-host": "host\n"})
	script := `echo hello > /written-in-container
		echo vol > /mnt/from-container
		echo "10.9.9.9 extra" >> /etc/hosts
		echo renamed > /etc/hostname
		echo "nameserver 10.9.9.9" >> /etc/resolv.conf`
	// /mnt exists in the image, so the volume's mount point is no change.
	name, r := e.runCtr("-v", vol+":/mnt", debianImage, "sh", "-c", script)
	if r.err != nil {
		t.Fatal(r)
	}
	if b, err := os.ReadFile(filepath.Join(vol, "from-container")); err != nil || string(b) != "vol\n" {
		t.Fatalf("the volume on the host holds %q, %v; want what the container wrote", b, err)
	}
	diff := e.must("diff", name)
	if !strings.Contains("\n"+diff, "\nA /written-in-container\n") {
		t.Errorf("strata diff does not list the new file as A:\n%s", diff)
	}
	for _, line := range strings.Split(strings.TrimSpace(diff), "\n") {
		if _, p, _ := strings.Cut(line, " "); belongsToTheRun(p) {
			t.Errorf("strata diff lists %q, which is the run's, not the container's:\n%s", line, diff)
		}
	}
	image := name + "-image"
	e.must("commit", name, image)
	if got := e.output(image, "cat", "/written-in-container"); got != "hello\n" {
		t.Errorf("a run of the committed image reads %q; want the file written before the commit", got)
	}
}

// belongsToTheRun says whether p, a path in TestRunDiffAndCommit's
// container, is the run's (its volume on /mnt, its generated /etc files)
// rather than the container's.
func belongsToTheRun(p string) bool {
	switch p {
	case "/mnt", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf":
		return true
	}
	return strings.HasPrefix(p, "/mnt/")
}

func TestRunReadOnlyVolume(t *testing.T) {
	e := newRunEnv(t)
	vol := t.TempDir()
	writeTree(t, vol, map[string]string{"readable": "yes\n"})
	_, r := e.runCtr("-v", vol+":/mnt:ro", debianImage, "sh", "-c", "cat /mnt/readable; echo no > /mnt/written")
	if exitCode(r) == 0 || r.stdout != "yes\n" || !strings.Contains(r.stderr, "Read-only file system") {
		t.Errorf("want the volume readable and the write refused with EROFS\n%s", r)
	}
	if _, err := os.Stat(filepath.Join(vol, "written")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the write reached the host's directory (stat: %v)", err)
	}
}

func TestRunNetworkNone(t *testing.T) {
	e := newRunEnv(t)
	// sysfs and /proc/net both show the container's network namespace.
	out := e.output("--network", "none", debianImage, "sh", "-c", "ls /sys/class/net; echo --; tail -n +3 /proc/net/dev")
	sysfs, procNet, _ := strings.Cut(out, "--\n")
	if sysfs != "lo\n" {
		t.Errorf("/sys/class/net lists %q; want only lo", sysfs)
	}
	var ifaces []string
	for _, line := range strings.Split(strings.TrimSpace(procNet), "\n") {
		iface, _, _ := strings.Cut(line, ":")
		ifaces = append(ifaces, strings.TrimSpace(iface))
	}
	if len(ifaces) != 1 || ifaces[0] != "lo" {
		t.Errorf("/proc/net/dev lists %q; want only lo", ifaces)
	}
}

// A detached container: its id, ps, logs, and stop running the command's
// SIGTERM trap.
func TestRunDetachedStop(t *testing.T) {
	e := newRunEnv(t)
	name, id := e.detach(debianImage, "sh", "-c", `trap 'echo trapped TERM; exit 7' TERM; echo started; while :; do sleep 0.1; done`)
	row := e.waitRunning(name)
	if row.ID != id {
		t.Errorf("strata run -d printed %s, strata ps says the container is %s", id, row.ID)
	}
	initFd := initPidfd(t, row.PID)
	e.waitLog(name, "started")

	e.must("stop", "-t", "60", name) // the timeout only matters if the trap is broken
	if !exited(initFd) {
		t.Errorf("the init (pid %d) is still there after strata stop returned", row.PID)
	}
	if row := e.ps(name); row.State == "running" || row.Mounted || row.PID != 0 {
		t.Errorf("after strata stop, ps says %+v; want it exited and unmounted", row)
	}
	if log := e.must("logs", name); !strings.Contains(log, "trapped TERM") {
		t.Errorf("the command's SIGTERM trap did not run (SIGKILLed?); log:\n%s", log)
	}
}

// strata kill -s forwards a signal to the command; plain strata kill ends
// the container.
func TestRunDetachedKill(t *testing.T) {
	e := newRunEnv(t)
	name, _ := e.detach(debianImage, "sh", "-c", `trap 'echo got USR1' USR1; echo started; while :; do sleep 0.1; done`)
	row := e.waitRunning(name)
	initFd := initPidfd(t, row.PID)
	e.waitLog(name, "started")

	e.must("kill", "-s", "USR1", name)
	e.waitLog(name, "got USR1")
	if exited(initFd) {
		t.Fatal("SIGUSR1, which the command traps, ended the container")
	}
	e.must("kill", name)
	waitFor(t, "the init to exit after strata kill", func() bool { return exited(initFd) })
	waitFor(t, "ps to show the container exited and unmounted", func() bool {
		row := e.ps(name)
		return row.State == "exited" && !row.Mounted
	})
	if r := e.run("kill", name); r.err == nil || !strings.Contains(r.stderr, "not running") {
		t.Errorf("strata kill of a container that has ended: want an error saying it is not running\n%s", r)
	}
}

func TestRunRemove(t *testing.T) {
	e := newRunEnv(t)
	name, r := e.runCtr("--rm", debianImage, "true")
	if r.err != nil {
		t.Fatal(r)
	}
	if e.listed(name) {
		t.Errorf("strata run --rm left container %s", name)
	}
	name, _ = e.detach("--rm", debianImage, "echo", "detached")
	waitFor(t, "strata run -d --rm to remove its container", func() bool { return !e.listed(name) })
}

// SIGTERM to a foreground strata run reaches the command: a trap's exit
// code, or 128+15 for a command without a handler.
func TestRunForegroundSigterm(t *testing.T) {
	cases := []struct {
		name   string
		script string
		code   int
	}{
		{"trap", `trap 'echo trapped; exit 3' TERM; echo ready; while :; do sleep 0.1; done`, 3},
		{"no handler", `echo ready; exec sleep 600`, 128 + int(syscall.SIGTERM)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newRunEnv(t)
			cmd, out := e.startForeground(debianImage, "sh", "-c", tc.script)
			waitForLine(t, out, "ready")
			must(t, cmd.Process.Signal(syscall.SIGTERM))
			err := cmd.Wait()
			var ee *exec.ExitError
			if !errors.As(err, &ee) && err != nil {
				t.Fatal(err)
			}
			if code := cmd.ProcessState.ExitCode(); code != tc.code {
				t.Errorf("strata run exited %d after SIGTERM; want %d", code, tc.code)
			}
		})
	}
}

var containerID = regexp.MustCompile(`^[0-9a-f]{64}$`)

// detach runs "strata run -d --name NAME ARGS..." and returns the name and
// the id it printed.
func (e *runEnv) detach(args ...string) (name, id string) {
	e.t.Helper()
	name = newName(e.t)
	out := e.must(append([]string{"run", "-d", "--name", name}, args...)...)
	id = strings.TrimSpace(out)
	if !containerID.MatchString(id) {
		e.t.Fatalf("strata run -d printed %q; want the container id", out)
	}
	return name, id
}

// ps is name's row of "strata ps -a" (a zero row if it is not listed).
func (e *runEnv) ps(name string) psRow {
	e.t.Helper()
	var rows []psRow
	e.jsonOut(&rows, "ps", "-a")
	for _, r := range rows {
		if r.Name == name {
			return r
		}
	}
	return psRow{}
}

func (e *runEnv) listed(name string) bool {
	e.t.Helper()
	return e.ps(name).Name != ""
}

// waitRunning waits until ps shows name running and mounted with an init
// pid. "strata run -d" returns once the command has started, so this
// should hold at once; the wait only makes a failure say what was seen.
func (e *runEnv) waitRunning(name string) psRow {
	e.t.Helper()
	var row psRow
	waitFor(e.t, "ps to show "+name+" running with a PID", func() bool {
		row = e.ps(name)
		return row.State == "running" && row.Mounted && row.PID > 0
	})
	return row
}

// waitLog waits until strata logs shows want.
func (e *runEnv) waitLog(name, want string) {
	e.t.Helper()
	var log string
	waitFor(e.t, fmt.Sprintf("strata logs to show %q", want), func() bool {
		log = e.must("logs", name)
		return strings.Contains(log, want)
	})
}

// startForeground starts "strata run --name NAME ARGS..." with its output
// on a pipe, as a user's shell would, and kills it at the end of the test
// if the test did not wait for it (its container then dies by Pdeathsig,
// and checkNothingLeft clears the mount it leaves).
func (e *runEnv) startForeground(args ...string) (*exec.Cmd, *bufio.Reader) {
	e.t.Helper()
	r, w, err := os.Pipe()
	must(e.t, err)
	cmd := exec.Command(strataBin, append([]string{"run", "--name", newName(e.t)}, args...)...)
	cmd.Env = append(os.Environ(), "STRATA_ROOT="+e.root)
	cmd.Stdout, cmd.Stderr = w, w
	err = cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		r.Close()
	})
	return cmd, bufio.NewReader(r)
}

// waitForLine reads lines until one is want, failing if the output ends or
// nothing comes for runWait.
func waitForLine(t *testing.T, r *bufio.Reader, want string) {
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
			if strings.TrimSpace(l.text) == want {
				return
			}
			if l.err != nil {
				t.Fatalf("the output ended before %q: %q (%v)", want, seen.String(), l.err)
			}
		case <-time.After(runWait):
			t.Fatalf("no %q after %v; output so far: %q", want, runWait, seen.String())
		}
	}
}

// waitFor polls cond until it holds, failing the test if it does not within
// runWait.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(runWait); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", runWait, what)
		}
	}
}

// initPidfd checks that pid is a container's init and returns a pidfd for
// it (closed at the end of the test), so that a reused pid can never be
// mistaken for it later.
func initPidfd(t *testing.T, pid int) int {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("the container's init, pid %d: %v", pid, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.HasPrefix(string(cmdline), "strata\x00__init\x00") {
		t.Fatalf("pid %d, which ps gives as the container's, is not a strata init: %q, %v", pid, cmdline, err)
	}
	return fd
}

// exited reports whether the process behind pidfd has exited.
func exited(pidfd int) bool {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}

// checkNothingLeft is each run test's last cleanup: no mount below the
// store and no strata process (mount daemon, monitor, init) may outlive
// the test. It reports what it finds (as an error if the test had passed)
// and removes it, so one broken test does not fail the ones after it.
func checkNothingLeft(t *testing.T, root string) {
	report := t.Errorf
	if t.Failed() {
		report = t.Logf
	}
	mounts := mountsBelow(t, root)
	procs := strataProcesses()
	if len(mounts) == 0 {
		// A mount daemon exits shortly after its unmount, not at once.
		procs = stillRunning(procs, runWait)
	}
	if len(procs) > 0 {
		report("strata processes left after the test (killing them): %s", strings.Join(describe(procs), "; "))
		killAll(t, procs)
	}
	if len(mounts) > 0 {
		report("mounts left on the host after the test (detaching them): %q", mounts)
		for i := len(mounts) - 1; i >= 0; i-- { // mountinfo lists a parent before its children
			_ = unix.Unmount(mounts[i], unix.MNT_DETACH)
		}
	}
}

// mountsBelow lists the host's mount points below dir.
func mountsBelow(t *testing.T, dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			found = append(found, f[4])
		}
	}
	return found
}

// strataProcesses are the live processes running this test binary's
// strata: mount daemons, run monitors and container inits all do (an init
// is a re-exec of /proc/self/exe). The commands in a container do not, but
// they cannot outlive its init: the kernel ends a PID namespace with it.
func strataProcesses() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, err := os.Readlink("/proc/" + e.Name() + "/exe"); err == nil && exe == strataBin {
			pids = append(pids, pid)
		}
	}
	return pids
}

// stillRunning waits up to bound for each of pids to exit and returns
// those that did not.
func stillRunning(pids []int, bound time.Duration) []int {
	var left []int
	deadline := time.Now().Add(bound)
	for _, pid := range pids {
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue // gone
		}
		wait := max(time.Until(deadline), 0)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(wait.Milliseconds()))
		for errors.Is(err, unix.EINTR) {
			n, err = unix.Poll(fds, int(wait.Milliseconds()))
		}
		if err == nil && n == 0 {
			left = append(left, pid)
		}
		unix.Close(fd)
	}
	return left
}

// describe names each process by its pid and command line.
func describe(pids []int) []string {
	var out []string
	for _, pid := range pids {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		out = append(out, fmt.Sprintf("%d: %s", pid, strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ")))
	}
	return out
}

// killAll SIGKILLs pids and waits for them to be gone.
func killAll(t *testing.T, pids []int) {
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if left := stillRunning(pids, runWait); len(left) > 0 {
		t.Errorf("processes %v survived SIGKILL for %v", left, runWait)
	}
}
