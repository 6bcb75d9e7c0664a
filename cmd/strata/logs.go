package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/strata-fs/strata/layerdb"
)

func init() {
	registerVerb(verb{name: "logs", summary: "print what a detached container wrote (-f: follow)", run: runLogs})
}

func runLogs(args []string) error {
	fs := newFlagSet("logs", "[-f] CONTAINER")
	sf := addStoreFlags(fs)
	follow := fs.BoolP("follow", "f", false, "keep printing while the container runs")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	var c *layerdb.Container
	err = withStore(sf.root, func(s *layerdb.Store) error {
		c, err = s.Container(pos[0])
		return err
	})
	if err != nil {
		return err
	}
	paths := pathsOf(filepath.Dir(c.Upper))
	f, err := os.Open(paths.log)
	if errors.Is(err, os.ErrNotExist) {
		return nil // never run detached: nothing was logged
	}
	if err != nil {
		return fmt.Errorf("opening the log of %s: %w", c.Name, err)
	}
	defer f.Close()
	if _, err := io.Copy(os.Stdout, f); err != nil {
		return err
	}
	if *follow {
		return followLog(f, paths)
	}
	return nil
}

// followLog keeps copying the log while a run of the container is live
// (its state file exists), checking for new output a few times a second.
func followLog(f *os.File, paths containerPaths) error {
	for {
		_, stateErr := os.Stat(paths.state)
		if _, err := io.Copy(os.Stdout, f); err != nil {
			return err
		}
		if stateErr != nil {
			return nil // the run had ended before that last copy
		}
		time.Sleep(200 * time.Millisecond)
	}
}
