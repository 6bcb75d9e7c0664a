package runner

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// InitVerb is the hidden command-line verb under which the strata binary,
// re-executed through /proc/self/exe, becomes a container's PID 1 and calls
// Init. A test binary that starts containers must dispatch it in TestMain.
const InitVerb = "__init"

// Process is a started container: its init and, under it, the command.
type Process struct {
	cmd *exec.Cmd
	// pty is the terminal's master side with Tty, else nil; ptyOutput is
	// closed when everything the container wrote to it has been copied.
	pty       *os.File
	ptyOutput chan struct{}
}

// Start creates the container's namespaces, lets the init set up the root
// filesystem, and returns once the command is about to be executed. An error
// means nothing is running and nothing is left mounted. A command that is
// not found or not executable is not an error here: Wait reports it as exit
// code 127 or 126, with a message on the command's stderr, as shells do.
func Start(spec Spec) (*Process, error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	cfg, err := buildInitConfig(&spec)
	if err != nil {
		return nil, err
	}
	return startInit(&spec, cfg)
}

// buildInitConfig resolves on the host what the init needs: the user from
// the image's passwd files, the environment, and the generated /etc files.
func buildInitConfig(spec *Spec) (initConfig, error) {
	user, err := resolveUser(spec.Rootfs, spec.User)
	if err != nil {
		return initConfig{}, err
	}
	hostname := spec.Hostname
	if hostname == "" {
		if hostname, err = os.Hostname(); err != nil {
			return initConfig{}, fmt.Errorf("reading the host name: %w", err)
		}
	}
	etcFiles, err := writeEtcFiles(spec.StateDir, hostname, spec.Network)
	if err != nil {
		return initConfig{}, err
	}
	workDir := spec.WorkingDir
	if workDir == "" {
		workDir = "/"
	}
	cfg := initConfig{
		Rootfs:      spec.Rootfs,
		Args:        spec.Args,
		Env:         commandEnv(spec, user, spec.Hostname),
		WorkingDir:  workDir,
		UID:         user.UID,
		GID:         user.GID,
		Groups:      user.Groups,
		Hostname:    spec.Hostname,
		EtcFiles:    etcFiles,
		NetworkNone: spec.Network == NetworkNone,
		ReadOnly:    spec.ReadOnly,
		Tty:         spec.Tty,
		TtySize:     spec.TtySize,
	}
	for _, v := range spec.Volumes {
		cfg.Volumes = append(cfg.Volumes, bindMount{Source: v.Source, Target: v.Target, ReadOnly: v.ReadOnly})
	}
	return cfg, nil
}

// namespaceFlags are the namespaces every container gets.
const namespaceFlags = unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC

// startInit re-executes this binary as the init inside new namespaces,
// hands it the config and waits for its reply.
func startInit(spec *Spec, cfg initConfig) (*Process, error) {
	configRead, configWrite, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("creating the config pipe: %w", err)
	}
	defer configWrite.Close()
	replyParent, replyChild, err := seqpacketPair()
	if err != nil {
		configRead.Close()
		return nil, err
	}
	defer replyParent.Close()

	cmd := initCommand(spec, cfg.NetworkNone)
	if !spec.Tty {
		stdin, err := commandStdin(spec.Stdin)
		if err != nil {
			configRead.Close()
			replyChild.Close()
			return nil, err
		}
		if stdin != nil && stdin != spec.Stdin {
			defer stdin.Close() // the init has its own copy once started
		}
		if stdin != nil {
			cmd.Stdin = stdin
		}
	}
	cmd.ExtraFiles = []*os.File{configRead, replyChild} // become fds 3 and 4
	err = startLocked(cmd)
	configRead.Close()
	replyChild.Close()
	if err != nil {
		return nil, fmt.Errorf("starting the container's init: %w", err)
	}

	// If the init died before reading, the reply (or its absence) says so.
	_ = json.NewEncoder(configWrite).Encode(cfg)
	configWrite.Close()

	reply, pty, err := receiveReply(replyParent)
	if err == nil && reply.Error != "" {
		err = errors.New(reply.Error)
	}
	if err != nil {
		if pty != nil {
			pty.Close()
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("setting up the container: %w", err)
	}
	p := &Process{cmd: cmd}
	if pty != nil {
		p.attachTerminal(pty, spec.Stdin, spec.Stdout)
	}
	return p, nil
}

// initCommand is the re-execution of this binary as the container's init.
// Setsid puts the init (and so the command) outside the caller's session:
// the caller's terminal neither sends it job-control signals nor stops it
// for reading; the runner forwards signals instead.
func initCommand(spec *Spec, networkNone bool) *exec.Cmd {
	cmd := &exec.Cmd{
		Path: "/proc/self/exe",
		Args: []string{"strata", InitVerb},
		Env:  []string{},
	}
	flags := uintptr(namespaceFlags)
	if networkNone {
		flags |= unix.CLONE_NEWNET
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: flags,
		Setsid:     true,
		Pdeathsig:  syscall.SIGKILL,
	}
	if spec.Tty {
		// The command's streams are the pty; the init's stderr still
		// shows a crash of the init itself.
		cmd.Stderr = spec.Stderr
	} else {
		cmd.Stdout, cmd.Stderr = spec.Stdout, spec.Stderr
	}
	return cmd
}

// commandStdin is what the init gets as fd 0 without Tty. exec.Cmd would
// copy a non-file reader itself, but Wait would then block until that
// reader ends, even after the container is gone; this copy is not waited
// for and ends at the reader's EOF or when the container closes the pipe.
func commandStdin(stdin io.Reader) (child *os.File, err error) {
	switch r := stdin.(type) {
	case nil:
		return nil, nil
	case *os.File:
		return r, nil
	}
	read, write, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("creating the stdin pipe: %w", err)
	}
	go func() {
		_, _ = io.Copy(write, stdin)
		write.Close()
	}()
	return read, nil
}

// startLocked starts cmd from a thread locked for the duration: the kernel
// ties Pdeathsig to the thread that forked, and a locked thread is not
// handed to a goroutine that might end it meanwhile.
func startLocked(cmd *exec.Cmd) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return cmd.Start()
}

func seqpacketPair() (parent, child *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("creating the reply socket: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "reply"), os.NewFile(uintptr(fds[1]), "reply"), nil
}

// attachTerminal copies stdin to the pty and the pty's output to stdout.
// The output copy ends with EIO once every process holding the terminal's
// other side has exited; the input copy ends when stdin does.
func (p *Process) attachTerminal(pty *os.File, stdin io.Reader, stdout io.Writer) {
	p.pty = pty
	p.ptyOutput = make(chan struct{})
	if stdout == nil {
		stdout = io.Discard
	}
	go func() {
		defer close(p.ptyOutput)
		_, _ = io.Copy(stdout, pty) // ends with EIO: the slave side is gone
	}()
	if stdin != nil {
		go func() { _, _ = io.Copy(pty, stdin) }()
	}
}

// Pid is the host pid of the container's init (PID 1 inside).
func (p *Process) Pid() int {
	return p.cmd.Process.Pid
}

// Signal sends sig to the init, which passes it on to the command. SIGKILL
// kills the init and so, by the kernel's rule for a PID namespace, every
// process in the container.
func (p *Process) Signal(sig os.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signalling the container's init: %w", err)
	}
	return nil
}

// Resize sets the size of the container's terminal; the kernel then sends
// SIGWINCH to the terminal's foreground process group. No-op without Tty.
func (p *Process) Resize(size WinSize) error {
	if p.pty == nil {
		return nil
	}
	ws := &unix.Winsize{Row: size.Rows, Col: size.Cols}
	if err := unix.IoctlSetWinsize(int(p.pty.Fd()), unix.TIOCSWINSZ, ws); err != nil {
		return fmt.Errorf("resizing the container's terminal: %w", err)
	}
	return nil
}

// Wait waits for the container to end and returns the command's exit code:
// its exit status, or 128+N if it (or the init) died of signal N. When Wait
// returns, no process of the container is left: the kernel kills the rest
// of a PID namespace when its PID 1 exits, before that PID 1 can be reaped.
func (p *Process) Wait() (int, error) {
	err := p.cmd.Wait()
	if p.pty != nil {
		<-p.ptyOutput
		p.pty.Close()
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		return -1, fmt.Errorf("waiting for the container: %w", err)
	}
	return exitCode(p.cmd.ProcessState.Sys().(syscall.WaitStatus)), nil
}

// exitCode is the shell's convention for a wait status.
func exitCode(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// Running reports whether process pid exists and has not exited. A process
// that has exited but whose parent has not reaped it yet (a zombie) is not
// running: a daemon started in the background is reparented to PID 1, and
// some init programs reap only every few seconds. The main thread of a
// multi-threaded process turns zombie before its other threads have
// finished exiting (and closed the process's files), so every thread is
// looked at.
func Running(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return false
	}
	for _, task := range tasks {
		if taskRunning(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name())) {
			return true
		}
	}
	return false
}

// taskRunning reads one thread's state from its stat file.
func taskRunning(statPath string) bool {
	stat, err := os.ReadFile(statPath)
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may
	// itself hold spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	switch stat[i+2] {
	case 'Z', 'X':
		return false
	}
	return true
}
