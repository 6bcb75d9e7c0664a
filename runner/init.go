package runner

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

// Init is the container's PID 1. The strata binary calls it for InitVerb
// and exits with its result. It reads its config from fd 3, builds the
// container's root (see the package doc), answers on fd 4, then starts the
// command as its child, forwards signals to it, reaps every orphan, and
// returns the command's exit code (128+N if it died of signal N).
func Init() int {
	// Catch every signal before anything else, so none that arrives during
	// setup is lost or takes its default action; they wait in the channel
	// until the command exists.
	signals := make(chan os.Signal, 128)
	signal.Notify(signals)

	cfg, err := readInitConfig()
	if err != nil {
		return failSetup(err)
	}
	unix.Umask(0o022)
	if err := setupContainer(&cfg); err != nil {
		return failSetup(err)
	}
	stdio, pty, err := commandStdio(&cfg)
	if err != nil {
		return failSetup(err)
	}
	ptyFd := -1
	if pty != nil {
		ptyFd = int(pty.Fd())
	}
	if err := sendReply(replyFd, initReply{}, ptyFd); err != nil {
		return failSetup(err)
	}
	if pty != nil {
		pty.Close()
	}
	unix.Close(replyFd)

	pid, code := startCommand(&cfg, stdio)
	closeTerminalCopies(stdio)
	if pid < 0 {
		return code
	}
	return superviseCommand(pid, signals)
}

func readInitConfig() (initConfig, error) {
	f := os.NewFile(configFd, "config")
	defer f.Close()
	var cfg initConfig
	if err := json.NewDecoder(io.LimitReader(f, 64<<20)).Decode(&cfg); err != nil {
		return initConfig{}, fmt.Errorf("reading the init's config: %w", err)
	}
	return cfg, nil
}

// failSetup reports a setup error to the runner, which returns it from
// Start. The exit code does not matter: Start does not report one.
func failSetup(err error) int {
	if sendErr := sendReply(replyFd, initReply{Error: err.Error()}, -1); sendErr != nil {
		fmt.Fprintf(os.Stderr, "strata init: %v\n", err)
	}
	return 125
}

// commandStdio is the command's fds 0, 1 and 2: the init's own, or with Tty
// a new terminal from the container's /dev/pts; then pty is its master,
// which goes to the runner.
func commandStdio(cfg *initConfig) (stdio []*os.File, pty *os.File, err error) {
	if !cfg.Tty {
		return []*os.File{os.Stdin, os.Stdout, os.Stderr}, nil, nil
	}
	master, slave, err := openTerminal(cfg)
	if err != nil {
		return nil, nil, err
	}
	return []*os.File{slave, slave, slave}, master, nil
}

// closeTerminalCopies drops the init's copy of the terminal's slave side
// once the command has its own, so the runner sees EIO when the command's
// side is gone.
func closeTerminalCopies(stdio []*os.File) {
	if stdio[0] != os.Stdin {
		stdio[0].Close()
	}
}

// openTerminal opens a new terminal in the container's devpts instance, so
// the command's tty is /dev/pts/N inside the container, owned by its user.
func openTerminal(cfg *initConfig) (master, slave *os.File, err error) {
	m, err := unix.Open("/dev/pts/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("opening a terminal: %w", err)
	}
	master = os.NewFile(uintptr(m), "pty master")
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("unlocking the terminal: %w", err)
	}
	s, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(m), unix.TIOCGPTPEER, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC)
	if errno != 0 {
		master.Close()
		return nil, nil, fmt.Errorf("opening the terminal's peer: %w", errno)
	}
	slave = os.NewFile(s, "pty slave")
	if err := unix.Fchown(int(s), int(cfg.UID), -1); err != nil {
		master.Close()
		slave.Close()
		return nil, nil, fmt.Errorf("giving the terminal to the user: %w", err)
	}
	if cfg.TtySize != nil {
		ws := &unix.Winsize{Row: cfg.TtySize.Rows, Col: cfg.TtySize.Cols}
		if err := unix.IoctlSetWinsize(int(s), unix.TIOCSWINSZ, ws); err != nil {
			master.Close()
			slave.Close()
			return nil, nil, fmt.Errorf("sizing the terminal: %w", err)
		}
	}
	return master, slave, nil
}

// superviseCommand is PID 1's loop: reap whatever child has exited (the
// command, or an orphan that the kernel re-parented to us) and forward every
// other signal to the command. It returns when the command has exited; the
// kernel then kills what is left in the namespace.
func superviseCommand(commandPid int, signals <-chan os.Signal) int {
	for {
		if status, exited := reapChildren(commandPid); exited {
			return exitCode(status)
		}
		switch sig := <-signals; sig {
		case unix.SIGCHLD, unix.SIGURG:
			// SIGCHLD: loop round and reap. SIGURG: the Go runtime's
			// own preemption signal, not meant for anyone.
		default:
			_ = unix.Kill(commandPid, sig.(syscall.Signal))
		}
	}
}

// reapChildren collects every child that has exited, without blocking, and
// reports the command's status if it was among them.
func reapChildren(commandPid int) (syscall.WaitStatus, bool) {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return 0, false
		}
		if pid == commandPid {
			return status, true
		}
	}
}
