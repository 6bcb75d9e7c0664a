package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/strata-fs/strata/layerdb"
)

func init() {
	registerVerb(verb{name: "images", summary: "list images (-a: and every layer)", run: runImages})
}

// imageRow is one line of "strata images".
type imageRow struct {
	Repository string    `json:"repository"`
	Tag        string    `json:"tag"`
	ID         string    `json:"id"`
	Created    time.Time `json:"created"`
	Size       int64     `json:"size"`
	Layer      bool      `json:"layer,omitempty"`
}

func runImages(args []string) error {
	fs := newFlagSet("images", "[-a]")
	sf := addStoreFlags(fs)
	sf.addFormat(fs)
	all := fs.BoolP("all", "a", false, "also list every layer")
	if _, err := parseArgs(fs, args, 0, 0); err != nil {
		return err
	}
	asJSON, err := sf.json()
	if err != nil {
		return err
	}
	var rows []imageRow
	err = withStore(sf.root, func(s *layerdb.Store) error {
		rows, err = imageRows(s, *all)
		return err
	})
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(rows)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 3, ' ', 0)
	fmt.Fprintln(w, "REPOSITORY\tTAG\tIMAGE ID\tCREATED\tSIZE")
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.Repository, r.Tag, short(r.ID), humanize.Time(r.Created), humanize.Bytes(uint64(r.Size)))
	}
	return w.Flush()
}

func imageRows(s *layerdb.Store, all bool) ([]imageRow, error) {
	images, err := s.Images()
	if err != nil {
		return nil, err
	}
	layers, err := s.Layers()
	if err != nil {
		return nil, err
	}
	size := map[string]int64{}
	for _, l := range layers {
		size[l.ChainID.String()] = l.Size
	}
	var rows []imageRow
	for _, im := range images {
		var total int64
		for _, l := range im.Layers {
			total += size[l.String()]
		}
		names := im.Names
		if len(names) == 0 {
			names = []string{"<none>:<none>"}
		}
		for _, n := range names {
			i := strings.LastIndex(n, ":")
			rows = append(rows, imageRow{Repository: n[:i], Tag: n[i+1:], ID: im.ID.String(), Created: im.Created, Size: total})
		}
	}
	if all {
		for _, l := range layers {
			rows = append(rows, imageRow{Repository: "<layer>", Tag: "<none>", ID: l.ChainID.String(), Created: l.Created, Size: l.Size, Layer: true})
		}
	}
	return rows, nil
}

// short is the 12-hex-digit form of an ID docker prints.
func short(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
