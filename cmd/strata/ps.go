package main

import (
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/strata-fs/strata/layerdb"
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
	fmt.Fprintln(w, "CONTAINER ID\tIMAGE\tCREATED\tSTATE\tMOUNTED\tNAME")
	for _, r := range rows {
		img := r.Image
		if len(img) == 71 {
			img = short(img)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%v\t%s\n", short(r.ID), img, humanize.Time(r.Created), r.State, r.Mounted, r.Name)
	}
	return w.Flush()
}
