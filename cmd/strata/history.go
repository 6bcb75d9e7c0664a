package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/strata-fs/strata/layerdb"
)

func init() {
	registerVerb(verb{name: "history", summary: "show the history of an image", run: runHistory})
}

// historyRow is one history entry; empty layers have no Layer and size 0.
type historyRow struct {
	Layer     string     `json:"layer,omitempty"`
	Created   *time.Time `json:"created,omitempty"`
	CreatedBy string     `json:"created_by"`
	Size      int64      `json:"size"`
	Comment   string     `json:"comment,omitempty"`
}

func runHistory(args []string) error {
	fs := newFlagSet("history", "IMAGE")
	sf := addStoreFlags(fs)
	sf.addFormat(fs)
	noTrunc := fs.Bool("no-trunc", false, "do not shorten CREATED BY")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	asJSON, err := sf.json()
	if err != nil {
		return err
	}
	var rows []historyRow
	err = withStore(sf.root, func(s *layerdb.Store) error {
		rows, err = historyRows(s, pos[0])
		return err
	})
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(rows)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 3, ' ', 0)
	fmt.Fprintln(w, "LAYER\tCREATED\tCREATED BY\tSIZE\tCOMMENT")
	for _, r := range rows {
		layer, created, by := "<missing>", "", strings.ReplaceAll(r.CreatedBy, "\n", " ")
		if r.Layer != "" {
			layer = short(r.Layer)
		}
		if r.Created != nil {
			created = humanize.Time(*r.Created)
		}
		if !*noTrunc && len(by) > 45 {
			by = by[:44] + "…"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", layer, created, by, humanize.Bytes(uint64(r.Size)), r.Comment)
	}
	return w.Flush()
}

// historyRows pairs the config's history with the image's layers, newest
// first: each entry that is not an empty_layer takes the next layer.
func historyRows(s *layerdb.Store, ref string) ([]historyRow, error) {
	im, err := s.Image(ref)
	if err != nil {
		return nil, err
	}
	var cfg v1.Image
	if err := json.Unmarshal(im.Config, &cfg); err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	var rows []historyRow
	next := 0
	for _, h := range cfg.History {
		r := historyRow{Created: h.Created, CreatedBy: h.CreatedBy, Comment: h.Comment}
		if !h.EmptyLayer && next < len(im.Layers) {
			l, err := s.Layer(im.Layers[next].String())
			if err != nil {
				return nil, err
			}
			r.Layer, r.Size = l.ChainID.String(), l.Size
			next++
		}
		rows = append(rows, r)
	}
	for i, j := 0, len(rows)-1; i < j; i, j = i+1, j-1 {
		rows[i], rows[j] = rows[j], rows[i]
	}
	return rows, nil
}
