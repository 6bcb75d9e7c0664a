package runner

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestRootIsTheView(t *testing.T) {
	t.Parallel()
	v := newView(t)
	want, err := os.ReadFile(filepath.Join(debianRoot(t), "etc/debian_version"))
	if err != nil {
		t.Fatal(err)
	}
	// A file only the view has: the host's /etc/debian_version may well
	// have the same content as the image's.
	if err := os.WriteFile(filepath.Join(v.Merged, "only-in-the-view"), []byte("view\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := run(t, v.spec(t, "cat", "/etc/debian_version", "/only-in-the-view"))
	if r.Code != 0 || r.Stdout != string(want)+"view\n" {
		t.Fatalf("got exit %d, stdout %q, stderr %q; want the image's %q and the view's marker", r.Code, r.Stdout, r.Stderr, want)
	}
}

func TestCommandIsChildOfInit(t *testing.T) {
	t.Parallel()
	v := newView(t)
	r := run(t, v.spec(t, "sh", "-c", `echo $$ $PPID; tr '\0' ' ' </proc/1/cmdline`))
	lines := strings.Split(strings.TrimSpace(r.Stdout), "\n")
	if r.Code != 0 || len(lines) != 2 {
		t.Fatalf("got exit %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}
	pids := strings.Fields(lines[0])
	if len(pids) != 2 || pids[0] == "1" || pids[1] != "1" {
		t.Errorf("$$ $PPID = %q; want the command to be a child of PID 1, not PID 1", lines[0])
	}
	if strings.TrimSpace(lines[1]) != "strata "+InitVerb {
		t.Errorf("PID 1's command line is %q; want the init", lines[1])
	}
}

func TestHostname(t *testing.T) {
	t.Parallel()
	v := newView(t)
	r := run(t, v.spec(t, "sh", "-c", "hostname; cat /etc/hostname; grep testbox /etc/hosts"))
	want := "testbox\ntestbox\n127.0.1.1\ttestbox\n"
	if r.Code != 0 || r.Stdout != want {
		t.Fatalf("got exit %d, stdout %q, stderr %q; want %q", r.Code, r.Stdout, r.Stderr, want)
	}
}

func TestMountinfoShowsOnlyContainerMounts(t *testing.T) {
	t.Parallel()
	v := newView(t)
	r := run(t, v.spec(t, "cat", "/proc/self/mountinfo"))
	if r.Code != 0 {
		t.Fatalf("got exit %d, stderr %q", r.Code, r.Stderr)
	}
	got := mountPointsOf(r.Stdout)
	want := []string{"/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys",
		"/etc/hosts", "/etc/hostname", "/etc/resolv.conf"}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("mount points inside: %q; want exactly %q\n%s", got, want, r.Stdout)
	}
}

func TestExitCodes(t *testing.T) {
	t.Parallel()
	v := newView(t)
	cases := []struct {
		script string
		want   int
	}{
		{"exit 0", 0},
		{"exit 42", 42},
		{"kill -KILL $$", 128 + 9},
		{"kill -TERM $$", 128 + 15},
	}
	for _, c := range cases {
		r := run(t, v.spec(t, "sh", "-c", c.script))
		if r.Code != c.want {
			t.Errorf("sh -c %q: exit %d, want %d (stderr %q)", c.script, r.Code, c.want, r.Stderr)
		}
	}
}

// TestSigtermReachesCommand sends SIGTERM to a process doing what
// "strata run" does (Run) and expects the command's trap to see it.
func TestSigtermReachesCommand(t *testing.T) {
	t.Parallel()
	v := newView(t)
	outRead, outWrite, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer outRead.Close()
	helper := startRunHelper(t, helperSpec{
		Rootfs: v.Merged, StateDir: t.TempDir(),
		Args: []string{"sh", "-c", `trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done`},
	}, outWrite, nil)
	outWrite.Close()
	out := bufio.NewReader(outRead)
	waitForLine(t, out, "ready")
	initPid := childOf(t, helper.Process.Pid)
	pidNS := pidNamespaceOf(initPid)

	if err := helper.Process.Signal(unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitForLine(t, out, "got-term")
	err = helper.Wait()
	if code := helper.ProcessState.ExitCode(); code != 7 {
		t.Fatalf("strata run stand-in exited %d (%v); want the command's 7", code, err)
	}
	assertNothingLeft(t, v.Merged, initPid, pidNS)
}

// childOf is the only child of pid: the container's init for a runner.
func childOf(t *testing.T, pid int) int {
	t.Helper()
	tasks, err := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "task", "*", "children"))
	if err != nil {
		t.Fatal(err)
	}
	var children []string
	for _, task := range tasks {
		data, _ := os.ReadFile(task)
		children = append(children, strings.Fields(string(data))...)
	}
	if len(children) != 1 {
		t.Fatalf("process %d has children %v; want exactly the init", pid, children)
	}
	child, _ := strconv.Atoi(children[0])
	return child
}

// TestZombiesAreReaped leaves an orphan that exits; only PID 1 can reap it,
// and its /proc entry goes away only once it is reaped.
func TestZombiesAreReaped(t *testing.T) {
	t.Parallel()
	v := newView(t)
	script := `
sh -c 'true & echo $! > /tmp/orphan'   # the parent exits without waiting
orphan=$(cat /tmp/orphan)
i=0
while [ -e /proc/$orphan ]; do
	i=$((i+1))
	if [ $i -gt 12000 ]; then echo "orphan $orphan never reaped:"; cat /proc/$orphan/status; exit 1; fi
	sleep 0.01
done
echo reaped`
	r := run(t, v.spec(t, "sh", "-c", script))
	if r.Code != 0 || r.Stdout != "reaped\n" {
		t.Fatalf("got exit %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}
}

func TestVolumes(t *testing.T) {
	t.Parallel()
	v := newView(t)
	roDir, rwDir := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(roDir, "in"), []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := v.spec(t, "sh", "-c", `cat /data/in; echo written > /out/file; echo x > /data/new`)
	spec.Volumes = []Volume{
		{Source: roDir, Target: "/data", ReadOnly: true},
		{Source: rwDir, Target: "/out"},
	}
	r := run(t, spec)
	if r.Code == 0 || r.Stdout != "from the host\n" || !strings.Contains(r.Stderr, "Read-only file system") {
		t.Fatalf("got exit %d, stdout %q, stderr %q; want the ro volume readable and EROFS on write", r.Code, r.Stdout, r.Stderr)
	}
	if got, err := os.ReadFile(filepath.Join(rwDir, "file")); err != nil || string(got) != "written\n" {
		t.Errorf("the rw volume's file on the host: %q, %v", got, err)
	}
	// The volumes' content never lands in the writable layer; only the
	// created mount points do, empty.
	for _, mp := range []string{"data", "out"} {
		entries, err := os.ReadDir(filepath.Join(v.Upper, mp))
		if err != nil || len(entries) != 0 {
			t.Errorf("upper layer's /%s: %v, %v; want an empty mount point", mp, entries, err)
		}
	}
}

func TestMissingVolumeSource(t *testing.T) {
	t.Parallel()
	v := newView(t)
	spec := v.spec(t, "true")
	spec.Volumes = []Volume{{Source: filepath.Join(t.TempDir(), "absent"), Target: "/data"}}
	if _, err := Start(spec); err == nil || !strings.Contains(err.Error(), "volume source") {
		t.Fatalf("Start with a missing volume source: %v; want a volume source error", err)
	}
}

// TestSetupFailureLeavesNothing makes the init fail after pivot_root (a
// volume target /proc cannot hold) and checks Start's error and the host.
func TestSetupFailureLeavesNothing(t *testing.T) {
	t.Parallel()
	v := newView(t)
	spec := v.spec(t, "true")
	spec.Volumes = []Volume{{Source: t.TempDir(), Target: "/proc/no-such-dir"}}
	_, err := Start(spec)
	if err == nil || !strings.Contains(err.Error(), "/proc/no-such-dir") {
		t.Fatalf("Start: %v; want an error about the mount target", err)
	}
	assertNothingLeft(t, v.Merged, -1, "")
}

func TestReadOnlyRoot(t *testing.T) {
	t.Parallel()
	v := newView(t)
	spec := v.spec(t, "sh", "-c", `touch /dev/shm/ok && echo shm-writable; touch /new-file`)
	spec.ReadOnly = true
	r := run(t, spec)
	if r.Code == 0 || r.Stdout != "shm-writable\n" || !strings.Contains(r.Stderr, "Read-only file system") {
		t.Fatalf("got exit %d, stdout %q, stderr %q; want EROFS from the root only", r.Code, r.Stdout, r.Stderr)
	}
}

func TestNetworkNone(t *testing.T) {
	t.Parallel()
	v := newView(t)
	spec := v.spec(t, "sh", "-c", `ls /sys/class/net; cat /sys/class/net/lo/flags`)
	spec.Network = NetworkNone
	r := run(t, spec)
	lines := strings.Fields(r.Stdout)
	if r.Code != 0 || len(lines) != 2 || lines[0] != "lo" {
		t.Fatalf("got exit %d, stdout %q, stderr %q; want only lo", r.Code, r.Stdout, r.Stderr)
	}
	flags, err := strconv.ParseUint(strings.TrimPrefix(lines[1], "0x"), 16, 32)
	if err != nil || flags&unix.IFF_UP == 0 {
		t.Errorf("lo flags %q: want IFF_UP", lines[1])
	}
}

func TestCommandNotFound(t *testing.T) {
	t.Parallel()
	v := newView(t)
	for _, args := range [][]string{{"no-such-command"}, {"/no/such/file"}} {
		r := run(t, v.spec(t, args...))
		if r.Code != 127 || !strings.Contains(r.Stderr, args[0]) {
			t.Errorf("%q: exit %d, stderr %q; want 127 and a message naming it", args, r.Code, r.Stderr)
		}
	}
}

func TestCommandNotExecutable(t *testing.T) {
	t.Parallel()
	v := newView(t)
	for _, args := range [][]string{{"/etc/passwd"}, {"/etc"}} {
		r := run(t, v.spec(t, args...))
		if r.Code != 126 || !strings.Contains(r.Stderr, "permission denied") {
			t.Errorf("%q: exit %d, stderr %q; want 126, permission denied", args, r.Code, r.Stderr)
		}
	}
}

func TestUser(t *testing.T) {
	t.Parallel()
	v := newView(t)
	cases := []struct{ user, want string }{
		{"", "uid=0(root) gid=0(root) groups=0(root)\n/root\n"},
		{"nobody", "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)\n/nonexistent\n"},
		{"1234:5678", "uid=1234 gid=5678 groups=5678\n/\n"},
		{"daemon:tty", "uid=1(daemon) gid=5(tty) groups=5(tty)\n/usr/sbin\n"},
	}
	for _, c := range cases {
		spec := v.spec(t, "sh", "-c", `id; echo $HOME`)
		spec.User = c.user
		r := run(t, spec)
		if r.Code != 0 || r.Stdout != c.want {
			t.Errorf("user %q: exit %d, stdout %q, stderr %q; want %q", c.user, r.Code, r.Stdout, r.Stderr, c.want)
		}
	}
	for _, bad := range []string{"no-such-user", "root:no-such-group"} {
		spec := v.spec(t, "id")
		spec.User = bad
		if _, err := Start(spec); err == nil || !strings.Contains(err.Error(), "unknown") {
			t.Errorf("user %q: Start gave %v; want an unknown user/group error", bad, err)
		}
	}
}

func TestWorkingDirAndEnv(t *testing.T) {
	t.Parallel()
	v := newView(t)
	spec := v.spec(t, "sh", "-c", `pwd; echo "$GREETING $HOSTNAME $PATH"`)
	spec.WorkingDir = "/srv/new/dir"
	spec.Env = []string{"GREETING=hello"}
	r := run(t, spec)
	want := "/srv/new/dir\nhello testbox " + defaultPath + "\n"
	if r.Code != 0 || r.Stdout != want {
		t.Fatalf("got exit %d, stdout %q, stderr %q; want %q", r.Code, r.Stdout, r.Stderr, want)
	}
}

// TestGeneratedEtcFilesStayOutOfTheView: the bind-mounted files are seen
// inside but never written to the writable layer. The Debian tree has no
// /etc/hosts, so the runner creates an empty placeholder for it.
func TestGeneratedEtcFilesStayOutOfTheView(t *testing.T) {
	t.Parallel()
	v := newView(t)
	r := run(t, v.spec(t, "sh", "-c", `echo 10.0.0.1 extra >> /etc/hosts; cat /etc/hostname`))
	if r.Code != 0 || r.Stdout != "testbox\n" {
		t.Fatalf("got exit %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}
	if info, err := os.Stat(filepath.Join(v.Upper, "etc/hosts")); err != nil || info.Size() != 0 {
		t.Errorf("upper layer's /etc/hosts: %v, %v; want the empty placeholder", info, err)
	}
	for _, name := range []string{"etc/hostname", "etc/resolv.conf"} {
		if _, err := os.Lstat(filepath.Join(v.Upper, name)); !os.IsNotExist(err) {
			t.Errorf("upper layer has %s (%v); the generated file must not land there", name, err)
		}
	}
}

func TestTerminal(t *testing.T) {
	t.Parallel()
	v := newView(t)
	var out strings.Builder
	spec := v.spec(t, "sh", "-c", `tty; stty size; read line; echo "read:$line"`)
	spec.Tty = true
	spec.TtySize = &WinSize{Rows: 33, Cols: 77}
	spec.Stdin = strings.NewReader("typed\n")
	spec.Stdout = &out
	r := run(t, spec)
	// The terminal echoes "typed" whenever it arrives, so only the set of
	// lines is certain, not their order.
	got := strings.Split(strings.TrimSpace(strings.ReplaceAll(out.String(), "\r\n", "\n")), "\n")
	want := []string{"/dev/pts/0", "33 77", "read:typed", "typed"}
	slices.Sort(got)
	if r.Code != 0 || !slices.Equal(got, want) {
		t.Fatalf("got exit %d, output lines %q, stderr %q; want %q", r.Code, got, r.Stderr, want)
	}
}

func TestTerminalResize(t *testing.T) {
	t.Parallel()
	v := newView(t)
	outRead, outWrite, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer outRead.Close()
	defer outWrite.Close() // the runner copies the terminal's output into it until Wait
	spec := v.spec(t, "sh", "-c", `trap 'stty size; exit 0' WINCH; echo ready; while :; do sleep 0.1; done`)
	spec.Tty = true
	spec.TtySize = &WinSize{Rows: 10, Cols: 20}
	spec.Stdout = outWrite
	p := start(t, spec)
	out := bufio.NewReader(outRead)
	waitForLine(t, out, "ready")
	if err := p.Resize(WinSize{Rows: 50, Cols: 132}); err != nil {
		t.Fatal(err)
	}
	waitForLine(t, out, "50 132")
	if code, err := p.Wait(); code != 0 || err != nil {
		t.Fatalf("Wait: %d, %v", code, err)
	}
}

// TestInteractiveTerminal is "strata run -it" on a terminal: the stand-in
// for strata run gets a host pty as its controlling terminal, puts it in
// raw mode, passes Ctrl-C through as a byte and follows its size.
func TestInteractiveTerminal(t *testing.T) {
	t.Parallel()
	v := newView(t)
	master, slave := openHostTerminal(t)
	setTerminalSize(t, master, 24, 80)
	script := `trap 'stty size' WINCH; trap 'echo got-int; exit 3' INT; stty size; echo ready; while :; do sleep 0.1; done`
	helper := startRunHelper(t, helperSpec{
		Rootfs: v.Merged, StateDir: t.TempDir(), Args: []string{"sh", "-c", script}, Tty: true,
	}, slave, &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0})
	out := bufio.NewReader(master)

	if seen := waitForLine(t, out, "ready"); !strings.Contains(seen, "24 80") {
		t.Errorf("the container's terminal did not start at the host's 24x80: %q", seen)
	}
	initPid := childOf(t, helper.Process.Pid)
	pidNS := pidNamespaceOf(initPid)
	if mode := terminalMode(t, slave); mode.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG) != 0 {
		t.Errorf("the host terminal is not in raw mode during the run: lflag %#x", mode.Lflag)
	}
	setTerminalSize(t, master, 50, 132) // the kernel sends the stand-in SIGWINCH
	waitForLine(t, out, "50 132")
	if _, err := master.Write([]byte{0x03}); err != nil { // Ctrl-C
		t.Fatal(err)
	}
	waitForLine(t, out, "got-int")
	_ = helper.Wait()
	if code := helper.ProcessState.ExitCode(); code != 3 {
		t.Errorf("exit %d; want the command's 3", code)
	}
	if mode := terminalMode(t, slave); mode.Lflag&(unix.ICANON|unix.ECHO) != unix.ICANON|unix.ECHO {
		t.Errorf("the host terminal's mode was not restored: lflag %#x", mode.Lflag)
	}
	assertNothingLeft(t, v.Merged, initPid, pidNS)
}

// openHostTerminal opens a new pty pair on the host; both are closed when
// the test ends.
func openHostTerminal(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	master = os.NewFile(uintptr(m), "host pty master")
	t.Cleanup(func() { master.Close() })
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	s, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(m), unix.TIOCGPTPEER, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC)
	if errno != 0 {
		t.Fatal(errno)
	}
	slave = os.NewFile(s, "host pty slave")
	t.Cleanup(func() { slave.Close() })
	return master, slave
}

func setTerminalSize(t *testing.T, f *os.File, rows, cols uint16) {
	t.Helper()
	if err := unix.IoctlSetWinsize(int(f.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
		t.Fatal(err)
	}
}

func terminalMode(t *testing.T, f *os.File) *unix.Termios {
	t.Helper()
	mode, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	return mode
}

// TestReadOnlyView runs on a view that is itself read-only (a read-only bind
// of the Debian tree): the generated file that has no placeholder there
// (/etc/hosts) is skipped, the others are mounted.
func TestReadOnlyView(t *testing.T) {
	t.Parallel()
	root := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(debianRoot(t), root, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(root, 0); err != nil {
			t.Errorf("unmounting the read-only view: %v", err)
			_ = unix.Unmount(root, unix.MNT_DETACH)
		}
	})
	if err := unix.Mount("", root, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	spec := Spec{Rootfs: root, StateDir: t.TempDir(), Hostname: "testbox",
		Args: []string{"sh", "-c", `cat /etc/hostname; test -e /etc/hosts || echo no-hosts`}}
	r := run(t, spec)
	if r.Code != 0 || r.Stdout != "testbox\nno-hosts\n" {
		t.Fatalf("got exit %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}
}
