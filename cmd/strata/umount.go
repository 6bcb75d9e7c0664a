package main

import (
	"errors"
	"fmt"
	"os/exec"

	"golang.org/x/sys/unix"
)

func init() {
	registerVerb(verb{
		name:    "umount",
		summary: "unmount a strata mount (the daemon then exits)",
		run:     runUmount,
	})
}

func runUmount(args []string) error {
	var lazy bool
	f := newFlagSet("umount", "[--lazy] MOUNTPOINT")
	f.BoolVarP(&lazy, "lazy", "l", false, "detach now, finish when no longer busy")
	if err := f.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if f.NArg() != 1 {
		f.Usage()
		return fmt.Errorf("%w: umount needs a MOUNTPOINT", errUsage)
	}
	return unmount(f.Arg(0), lazy)
}

// unmount detaches a strata mount; without privileges it asks fusermount3.
func unmount(mountpoint string, lazy bool) error {
	flags := 0
	if lazy {
		flags = unix.MNT_DETACH
	}
	err := unix.Unmount(mountpoint, flags)
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EPERM) {
		args := []string{"-u", mountpoint}
		if lazy {
			args = []string{"-u", "-z", mountpoint}
		}
		if out, ferr := exec.Command("fusermount3", args...).CombinedOutput(); ferr != nil {
			return fmt.Errorf("unmount %s: %v: %s", mountpoint, ferr, out)
		}
		return nil
	}
	return fmt.Errorf("unmount %s: %w", mountpoint, err)
}
