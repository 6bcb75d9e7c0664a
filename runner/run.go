package runner

import (
	"fmt"
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

// Run is what "strata run" does in the foreground: Start, then pass every
// signal this process catches on to the container until it ends, then Wait.
// With Tty and a terminal on Stdin, that terminal is put in raw mode for the
// run (so Ctrl-C travels as a byte to the container's own terminal) and its
// size follows SIGWINCH.
//
// Run takes over this process's signal handling while it runs; a program
// that starts several containers or handles signals itself uses Start.
func Run(spec Spec) (int, error) {
	inputTerm, sizeTerm := hostTerminals(spec)
	if spec.TtySize == nil && sizeTerm != nil {
		if size, err := terminalSize(sizeTerm); err == nil {
			spec.TtySize = &size
		}
	}

	signals := make(chan os.Signal, 64)
	signal.Notify(signals)
	defer signal.Stop(signals)

	p, err := Start(spec)
	if err != nil {
		return -1, err
	}
	if inputTerm != nil {
		restore, err := makeRaw(inputTerm)
		if err != nil {
			_ = p.Signal(unix.SIGKILL)
			_, _ = p.Wait()
			return -1, err
		}
		defer restore()
	}

	done := make(chan struct{})
	defer close(done)
	go forwardSignals(p, signals, sizeTerm, done)
	if spec.Started != nil {
		spec.Started(p)
	}
	return p.Wait()
}

// hostTerminals finds, with Spec.Tty, the caller's terminal: inputTerm is
// Stdin when it is one (it goes raw for the run), sizeTerm is Stdin or
// else Stdout when either is one (the container's terminal follows its
// size). Both are nil without Tty.
func hostTerminals(spec Spec) (inputTerm, sizeTerm *os.File) {
	if !spec.Tty {
		return nil, nil
	}
	if f, ok := spec.Stdin.(*os.File); ok && isTerminal(f) {
		return f, f
	}
	if f, ok := spec.Stdout.(*os.File); ok && isTerminal(f) {
		return nil, f
	}
	return nil, nil
}

// forwardSignals passes caught signals to the container until done. Three
// are not forwarded: SIGCHLD (about our own child, the init), SIGURG (the
// Go runtime's preemption signal) and SIGPIPE (about our own writes). With
// a terminal, SIGWINCH resizes the container's terminal instead.
func forwardSignals(p *Process, signals <-chan os.Signal, hostTerm *os.File, done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case sig := <-signals:
			switch sig {
			case unix.SIGCHLD, unix.SIGURG, unix.SIGPIPE:
			case unix.SIGWINCH:
				if hostTerm == nil {
					_ = p.Signal(sig)
				} else if size, err := terminalSize(hostTerm); err == nil {
					_ = p.Resize(size)
				}
			default:
				_ = p.Signal(sig)
			}
		}
	}
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func terminalSize(f *os.File) (WinSize, error) {
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return WinSize{}, fmt.Errorf("reading the terminal size: %w", err)
	}
	return WinSize{Rows: ws.Row, Cols: ws.Col}, nil
}

// makeRaw puts the terminal in raw mode: no echo, no line editing, no
// signal keys, no output processing, bytes passed through one by one (the
// settings cfmakeraw(3) describes). It returns the function that restores
// the previous settings.
func makeRaw(f *os.File) (restore func(), err error) {
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, fmt.Errorf("reading the terminal mode: %w", err)
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN] = 1
	raw.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, fmt.Errorf("setting the terminal to raw mode: %w", err)
	}
	return func() { _ = unix.IoctlSetTermios(fd, unix.TCSETS, old) }, nil
}
