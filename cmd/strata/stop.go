package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

func init() {
	registerVerb(verb{name: "stop", summary: "stop running containers (SIGTERM, then SIGKILL after a timeout)", run: runStop})
}

func runStop(args []string) error {
	fs := newFlagSet("stop", "[-t SECONDS] CONTAINER...")
	sf := addStoreFlags(fs)
	timeout := fs.IntP("time", "t", 10, "seconds to wait after SIGTERM before SIGKILL")
	refs, err := parseArgs(fs, args, 1, -1)
	if err != nil {
		return err
	}
	var failed error
	for _, ref := range refs {
		err := stopContainer(sf.root, ref, time.Duration(*timeout)*time.Second)
		if errors.Is(err, errNotRunning) {
			fmt.Fprintf(os.Stderr, "strata: stop: %v\n", err)
			continue
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "strata: stop: %v\n", err)
			failed = fmt.Errorf("some containers were not stopped")
			continue
		}
		fmt.Println(ref)
	}
	return failed
}

// stopContainer sends SIGTERM to the container's init (which forwards it to
// the command), SIGKILL if it is still there after timeout (which ends every
// process in the container), then waits for strata run to unmount it.
func stopContainer(root, ref string, timeout time.Duration) error {
	c, st, err := runningContainer(root, ref)
	if err != nil {
		return err
	}
	pidfd, err := openInit(c, st)
	if err != nil {
		return err
	}
	defer unix.Close(pidfd)
	if err := unix.PidfdSendSignal(pidfd, unix.SIGTERM, nil, 0); err != nil {
		return fmt.Errorf("container %s: SIGTERM: %w", c.Name, err)
	}
	if !waitForExit(pidfd, timeout) {
		if err := unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("container %s: SIGKILL: %w", c.Name, err)
		}
		waitForExit(pidfd, -1)
	}
	waitForMonitor(st.MonitorPid)
	return nil
}
