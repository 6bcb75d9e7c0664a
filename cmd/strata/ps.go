package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/strata-fs/strata/layerdb"
	"github.com/strata-fs/strata/runner"
)

func init() {
	registerVerb(verb{name: "ps", summary: "list mounted containers (-a: all)", run: runPs})
}

type psRow struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Image   string    `json:"image"`
	Created time.Time `json:"created"`
	State   string    `json:"state"`
	Mounted bool      `json:"mounted"`
	// PID is the container's init on the host while `strata run` runs it.
	PID int `json:"pid,omitempty"`
}

// runningInitPid is the host pid of the container's init while a run is
// live (from its run state, checked against /proc), else 0.
func runningInitPid(c *layerdb.Container) int {
	data, err := os.ReadFile(pathsOf(filepath.Dir(c.Upper)).state)
	if err != nil {
		return 0
	}
	var st runState
	if json.Unmarshal(data, &st) != nil || st.InitPid == 0 {
		return 0
	}
	if !runner.Running(st.InitPid) {
		return 0
	}
	return st.InitPid
}

func runPs(args []string) error {
	fs := newFlagSet("ps", "[-a]")
	sf := addStoreFlags(fs)
	sf.addFormat(fs)
	all := fs.BoolP("all", "a", false, "list every container, not only mounted ones")
	if _, err := parseArgs(fs, args, 0, 0); err != nil {
		return err
	}
	asJSON, err := sf.json()
	if err != nil {
		return err
	}
	var rows []psRow
	err = withStore(sf.root, func(s *layerdb.Store) error {
		ctrs, err := s.Containers()
		if err != nil {
			return err
		}
		for _, c := range ctrs {
			r := psRow{ID: c.ID, Name: c.Name, Image: c.Image.String(), Created: c.Created, State: c.State, Mounted: s.Mounted(c)}
			r.PID = runningInitPid(c)
			if r.PID != 0 {
				r.State = "running"
			}
			if im, err := s.Image(c.Image.String()); err == nil && len(im.Names) > 0 {
				r.Image = im.Names[0]
			}
			if *all || r.Mounted {
				rows = append(rows, r)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(rows)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 3, ' ', 0)
	fmt.Fprintln(w, "CONTAINER ID\tIMAGE\tCREATED\tSTATE\tPID\tMOUNTED\tNAME")
	for _, r := range rows {
		img := r.Image
		if len(img) == 71 {
			img = short(img)
		}
		pid := "-"
		if r.PID != 0 {
			pid = fmt.Sprint(r.PID)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%v\t%s\n", short(r.ID), img, humanize.Time(r.Created), r.State, pid, r.Mounted, r.Name)
	}
	return w.Flush()
}
