package main

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

func init() {
	registerVerb(verb{name: "kill", summary: "send a signal to running containers (default SIGKILL)", run: runKill})
}

func runKill(args []string) error {
	fs := newFlagSet("kill", "[-s SIGNAL] CONTAINER...")
	sf := addStoreFlags(fs)
	sigName := fs.StringP("signal", "s", "KILL", "signal name (TERM, SIGTERM) or number")
	refs, err := parseArgs(fs, args, 1, -1)
	if err != nil {
		return err
	}
	sig, err := parseSignal(*sigName)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	for _, ref := range refs {
		if err := killContainer(sf.root, ref, sig); err != nil {
			return err
		}
		fmt.Println(ref)
	}
	return nil
}

// killContainer signals the container's init, which forwards the signal to
// the command; SIGKILL (and SIGSTOP) act on the init itself, and SIGKILL
// ends every process in the container.
func killContainer(root, ref string, sig unix.Signal) error {
	c, st, err := runningContainer(root, ref)
	if err != nil {
		return err
	}
	pidfd, err := openInit(c, st)
	if err != nil {
		return err
	}
	defer unix.Close(pidfd)
	if err := unix.PidfdSendSignal(pidfd, sig, nil, 0); err != nil {
		return fmt.Errorf("container %s: %v: %w", c.Name, sig, err)
	}
	return nil
}

// parseSignal accepts "9", "KILL", "SIGKILL" and "sigkill".
func parseSignal(s string) (unix.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65 {
		return unix.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q", s)
}
