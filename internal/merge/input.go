package merge

import "slices"

// Image is what the caller found out about one image file (with qemu-img
// info -U, or from QEMU).
type Image struct {
	// Backing is the absolute, clean path of the backing file, "" for
	// none.
	Backing string
	// Snapshots are the names of the internal snapshots the image holds.
	Snapshots []string
}

// Graph describes the images that exist. An image the map does not hold
// is taken not to exist. Every path in this package is absolute and clean,
// as the caller resolves it (relative backing names are resolved against
// the directory of the image that names them).
//
// The caller describes at least every image of Images(chains, records):
// the planner sees an image's children only among the images described.
type Graph struct {
	Images map[string]Image
}

// children returns the described images backed by f, sorted.
func (g Graph) children(f string) []string {
	var out []string
	for name, im := range g.Images {
		if im.Backing == f && name != f {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

func (g Graph) exists(f string) bool {
	_, ok := g.Images[f]
	return ok && f != ""
}

// Chain is one disk's image chain as the domain runs on it.
type Chain struct {
	// Device names the disk in errors.
	Device string
	// Top is the active layer: the image the guest writes.
	Top string
	// Backing is the chain below Top, nearest first.
	Backing []string
}

// images returns Top then Backing.
func (c Chain) images() []string {
	return append([]string{c.Top}, c.Backing...)
}

// Kinds of record disks, as the store spells them.
const (
	KindInternal = "internal"
	KindExternal = "external"
)

// Disk is one disk of a snapshot record.
type Disk struct {
	// Device names the disk.
	Device string
	// Kind is KindInternal or KindExternal; only external disks are
	// merged.
	Kind string
	// File is the frozen image of an external snapshot (the image of an
	// internal one).
	File string
	// Overlay is the overlay the external snapshot put on File.
	Overlay string
	// Removed is true once a delete finished this disk.
	Removed bool
	// Merging is the executor's progress mark: the child an earlier run
	// of a delete of this snapshot started to merge into File, written
	// to the record before the merge starts. "" when none was written.
	Merging string
	// Pivoting is the executor's second mark for an active commit of
	// Merging: written just before QEMU was asked to complete the job
	// (switch the disk onto File). QEMU flushes File before it switches,
	// so a domain found running directly on File after that mark runs on
	// the finished merge.
	Pivoting bool
}

// Record is what the planner needs of one snapshot record.
type Record struct {
	// Name is the snapshot's name.
	Name string
	// Disks are the record's disks, in the record's order; DiskPlan.Index
	// and Ref.Disk index them.
	Disks []Disk
	// RevertOverlays are the overlays reverts to this snapshot created
	// (the record's vmsnap.revert-overlay.N labels).
	RevertOverlays []string
}

// Input is everything PlanDelete and Classify read.
type Input struct {
	// Graph describes the images that exist.
	Graph Graph
	// Online is true when QEMU runs the domain; Chains are then QEMU's
	// chains (query-block). Offline, Chains are the chains the shut-off
	// domain starts from, and every merge is done with qemu-img.
	Online bool
	// Chains are the domain's disks.
	Chains []Chain
	// Records are all the domain's snapshot records, the one to delete
	// included.
	Records []Record
	// Delete names the snapshot to delete.
	Delete string
	// Resume is true when the record of Delete carries a delete intent
	// left by an earlier run that did not finish: the graph may show
	// merges that run made. PlanDelete then classifies each disk first (see
	// Classify).
	Resume bool
	// SameQEMU is true when the executor knows that the QEMU process
	// that ran the earlier run's merges is the one running now (its
	// commit job is still listed by query-jobs, or the process identity
	// recorded with the intent matches). It is false offline. Only then
	// is a backing link QEMU rewrote taken as proof that the frozen image
	// holds the merged data: a QEMU that died after rewriting the link
	// may not have written the frozen image's metadata.
	SameQEMU bool
}

// Images returns the images the caller must describe in Graph: those of
// the chains and every image a record names (frozen images, overlays,
// progress marks and revert overlays), sorted and without duplicates.
func Images(chains []Chain, records []Record) []string {
	var out []string
	for _, c := range chains {
		out = append(out, c.images()...)
	}
	for _, r := range records {
		for _, d := range r.Disks {
			out = append(out, d.File, d.Overlay, d.Merging)
		}
		out = append(out, r.RevertOverlays...)
	}
	out = slices.DeleteFunc(out, func(s string) bool { return s == "" })
	slices.Sort(out)
	return slices.Compact(out)
}
