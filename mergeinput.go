package vmsnap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/vmsnap/vmsnap/internal/merge"
	"github.com/vmsnap/vmsnap/internal/qemuimg"
	"github.com/vmsnap/vmsnap/store"
)

// What the merge executor (merge.go) feeds internal/merge and checks
// before it acts: the image graph, the chains, the records, and the proof
// that every file the plan touches is this domain's own.

// unprovenMergeFiles returns the files the plan would remove, rebase or
// commit that vmsnap cannot prove are this domain's own (see
// ownership.go): neither in the chains the domain runs on nor proven by a
// token of one of its records; and the memory file, unless it is where
// vmsnap puts it. The plan runs only when there are none.
func (d *Domain) unprovenMergeFiles(r *store.Record, recs []*store.Record, in merge.Input, plan *merge.Plan) []string {
	inChain := map[string]bool{}
	for _, c := range in.Chains {
		inChain[c.Top] = true
		for _, b := range c.Backing {
			inChain[b] = true
		}
	}
	var tokens []string
	for _, rr := range append(recs, r) {
		tokens = append(tokens, ownTokens(rr.Labels)...)
	}
	var bad []string
	check := func(f string) {
		if f == "" || inChain[f] || slices.Contains(bad, f) {
			return
		}
		if _, err := os.Lstat(f); errors.Is(err, os.ErrNotExist) {
			return
		}
		if !d.provenBy(tokens, f) {
			bad = append(bad, f)
		}
	}
	for _, dp := range plan.Disks {
		if dp.Action == merge.ActionDone {
			continue
		}
		for _, f := range dp.Garbage {
			check(f)
		}
		for _, f := range append(append([]string(nil), dp.Relink...), dp.Rebase...) {
			check(f)
		}
		if dp.Method == merge.MethodOfflineCommit {
			check(dp.Child)
			check(dp.Frozen)
		}
	}
	for _, f := range plan.RevertOverlays {
		check(f)
	}
	if f := r.Memory.File; f != "" && !d.ownedMemoryFile(r.Name, f) {
		if _, err := os.Lstat(f); err == nil {
			bad = append(bad, f)
		}
	}
	return bad
}

// mergeInput describes for the planner the images, QEMU's chains (or the
// chains a shut-off domain starts from) and the records.
func (d *Domain) mergeInput(ctx context.Context, r *store.Record, recs []*store.Record, disks []Disk) (merge.Input, error) {
	in := merge.Input{Online: d.online(), Delete: r.Name, Graph: merge.Graph{Images: map[string]merge.Image{}}}
	for _, rr := range recs {
		if rr.Name == r.Name {
			rr = r
		}
		mr := merge.Record{Name: rr.Name}
		for i, dd := range rr.Disks {
			mr.Disks = append(mr.Disks, merge.Disk{Device: dd.Device, Kind: dd.Kind, File: dd.File, Overlay: dd.Overlay, Removed: dd.Removed, Merging: rr.Labels[labelMerging+strconv.Itoa(i)], Pivoting: rr.Labels[labelMergingPivot+strconv.Itoa(i)] == "true"})
		}
		for k, f := range rr.Labels {
			if strings.HasPrefix(k, labelRevertOverlay) {
				mr.RevertOverlays = append(mr.RevertOverlays, f)
			}
		}
		in.Records = append(in.Records, mr)
	}
	// Describe every image the chains and records name, and their
	// backing files, following the links down.
	var todo []string
	for _, dk := range disks {
		todo = append(todo, dk.File)
		todo = append(todo, dk.Backing...)
	}
	todo = append(todo, merge.Images(nil, in.Records)...)
	for len(todo) > 0 {
		f := todo[0]
		todo = todo[1:]
		if _, seen := in.Graph.Images[f]; seen || f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			continue
		}
		info, err := d.img.Info(ctx, f)
		if err != nil {
			return in, err
		}
		in.Graph.Images[f] = merge.Image{Backing: info.Backing, Snapshots: snapshotTags(info)}
		todo = append(todo, info.Backing)
	}
	for _, dk := range disks {
		c := merge.Chain{Device: dk.name(), Top: dk.File}
		if in.Online {
			c.Backing = dk.Backing
		} else {
			for b := in.Graph.Images[dk.File].Backing; b != ""; b = in.Graph.Images[b].Backing {
				c.Backing = append(c.Backing, b)
				if len(c.Backing) > 1024 {
					return in, fmt.Errorf("%w: the backing chain of %s loops", ErrInconsistent, dk.File)
				}
			}
		}
		in.Chains = append(in.Chains, c)
	}
	return in, nil
}

// imagesInUse returns the images that must stay as they are: those in
// QEMU's chains and those the records other than skip name (frozen images
// and overlays of disks a delete has not finished).
func imagesInUse(disks []Disk, recs []*store.Record, skip string) map[string]bool {
	used := map[string]bool{}
	for _, dk := range disks {
		used[dk.File] = true
		for _, b := range dk.Backing {
			used[b] = true
		}
	}
	for _, r := range recs {
		if r.Name == skip {
			continue
		}
		for _, dd := range r.Disks {
			if !dd.Removed {
				used[dd.File], used[dd.Overlay] = true, true
			}
		}
	}
	delete(used, "")
	return used
}

// rebase points image at base without copying data (qemu-img rebase -u):
// base already holds what image's old backing file held.
func (d *Domain) rebase(ctx context.Context, image, base string) error {
	if err := d.img.Rebase(ctx, image, base, ""); err != nil {
		return fmt.Errorf("rebase %s onto %s: %w", image, base, err)
	}
	return nil
}

// snapshotTags returns the tags of the internal snapshots info lists.
func snapshotTags(info *qemuimg.Info) []string {
	if info == nil {
		return nil
	}
	var out []string
	for _, s := range info.Snapshots {
		out = append(out, s.Name)
	}
	return out
}
