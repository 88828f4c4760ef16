package vmsnap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vmsnap/vmsnap/store"
)

// Deleting an external snapshot S of a disk: S froze image F and put
// overlay O on top of it, so F holds S's point in time and the layers
// above hold what came after. Deleting S merges F's one live child into F
// (block-commit): F then holds what the child held, the child goes, and
// whatever was backed by the child is backed by F. A snapshot whose frozen
// image was the child now finds that content in F, and its record says so.
//
// An image is live when QEMU runs on it (in a chain) or a snapshot record
// names it. S's own overlay O is live unless a revert left it behind
// (nothing runs on it, no snapshot froze it, nothing is backed by it): it
// then holds only state the revert discarded and goes with S. Nothing is
// ever merged into an image that backs two live branches: that delete is
// refused with the reason, since the merge would change what the other
// branch sees.
//
// Online (the child in QEMU's chain) the merge is QEMU's block-commit: an
// active commit completed with job-complete when the child is the active
// layer, an intermediate commit otherwise. Offline it is qemu-img commit,
// then qemu-img rebase -u of the child's children onto F.

// imageFacts is what qemu-img info says of an image (-U: QEMU may hold
// it): its format, backing file and internal snapshots.
type imageFacts struct {
	Format    string
	Backing   string
	Snapshots []string
}

func (d *Domain) imageFacts(ctx context.Context, file string) (imageFacts, error) {
	out, err := d.qemuImgOutput(ctx, "info", "--output=json", "-U", "--", file)
	if err != nil {
		return imageFacts{}, err
	}
	var info struct {
		Format    string `json:"format"`
		Full      string `json:"full-backing-filename"`
		Backing   string `json:"backing-filename"`
		Snapshots []struct {
			Name string `json:"name"`
		} `json:"snapshots"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return imageFacts{}, fmt.Errorf("qemu-img info %s: %w", file, err)
	}
	f := imageFacts{Format: info.Format, Backing: info.Full}
	if f.Backing == "" {
		f.Backing = info.Backing
	}
	if f.Backing != "" && !filepath.IsAbs(f.Backing) {
		f.Backing = filepath.Join(filepath.Dir(file), f.Backing)
	}
	for _, s := range info.Snapshots {
		f.Snapshots = append(f.Snapshots, s.Name)
	}
	return f, nil
}

// knownImages lists every image file vmsnap can see for the domain: the
// files in QEMU's chains and those named by any record.
func (d *Domain) knownImages(ctx context.Context, disks []Disk) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	add := func(f string) {
		if f != "" && !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	for _, dk := range disks {
		add(dk.File)
		for _, b := range dk.Backing {
			add(b)
		}
	}
	recs, err := d.store.List(ctx, d.uuid)
	if err != nil && len(recs) == 0 {
		return nil, err
	}
	for _, r := range recs {
		for _, dd := range r.Disks {
			if dd.Kind == string(DiskExternal) {
				add(dd.File)
				add(dd.Overlay)
			}
		}
	}
	return out, nil
}

// deleteExternal merges away external snapshot r's layers as above and
// removes its memory file.
func (d *Domain) deleteExternal(ctx context.Context, r *store.Record, disks []Disk) error {
	s := fromRecord(r)
	images, err := d.knownImages(ctx, disks)
	if err != nil {
		return err
	}
	// backing of every known image that still exists.
	backing := map[string]string{}
	facts := map[string]imageFacts{}
	for _, f := range images {
		if _, err := os.Stat(f); err != nil {
			continue
		}
		fa, err := d.imageFacts(ctx, f)
		if err != nil {
			return err
		}
		facts[f] = fa
		backing[f] = fa.Backing
	}
	children := func(f string) []string {
		var out []string
		for img, b := range backing {
			if b == f {
				out = append(out, img)
			}
		}
		return out
	}
	// live images: in QEMU's chains, or a record's frozen image or overlay
	// (other than this snapshot's own overlay, judged below).
	live := map[string]bool{}
	for _, dk := range disks {
		live[dk.File] = true
		for _, b := range dk.Backing {
			live[b] = true
		}
	}
	recs, _ := d.store.List(ctx, d.uuid)
	for _, rr := range recs {
		for _, dd := range rr.Disks {
			if dd.Kind != string(DiskExternal) {
				continue
			}
			live[dd.File] = true
			if rr.Name != s.Name {
				live[dd.Overlay] = true
			}
		}
	}
	// Check every disk before changing any.
	type merge struct {
		ds    DiskSnapshot
		child string   // the one live image backed by ds.File, merged into it ("" for none)
		kids  []string // images backed by child
		drop  []string // files to remove afterwards
	}
	var plan []merge
	for _, ds := range s.Disks {
		if ds.Kind != DiskExternal {
			continue
		}
		m := merge{ds: ds}
		ownDead := false
		if _, err := os.Stat(ds.Overlay); err == nil {
			// The snapshot's own overlay is dead when a revert left it
			// behind: nothing runs on it, no snapshot froze it, nothing is
			// backed by it. It holds only state the revert discarded.
			ownDead = !live[ds.Overlay] && len(children(ds.Overlay)) == 0
			if !ownDead {
				live[ds.Overlay] = true
			}
		}
		var liveKids []string
		for _, k := range children(ds.File) {
			if live[k] {
				liveKids = append(liveKids, k)
			}
		}
		if len(liveKids) > 1 {
			return &DiskError{Disk: diskLabel(ds), Err: fmt.Errorf("%w: image %s backs %v (branches made by reverts); merging one into it would change what the others see — delete the snapshots of the other branches first, or use DeleteMetadataOnly to drop only the record", ErrUnsupported, ds.File, liveKids)}
		}
		if len(liveKids) == 1 {
			m.child = liveKids[0]
			if sn := facts[m.child].Snapshots; len(sn) > 0 {
				return &DiskError{Disk: diskLabel(ds), Err: fmt.Errorf("%w: overlay %s holds internal snapshots %v that a merge would destroy; delete them first", ErrUnsupported, m.child, sn)}
			}
			m.kids = children(m.child)
			m.drop = append(m.drop, m.child)
		}
		if ownDead {
			m.drop = append(m.drop, ds.Overlay)
		}
		plan = append(plan, m)
	}
	var nodes map[string]string
	if d.online() {
		if nodes, err = d.nodesByFile(ctx); err != nil {
			return err
		}
	}
	for _, m := range plan {
		ds := m.ds
		if m.child != "" {
			if err := d.mergeOverlay(ctx, ds.File, m.child, m.kids, disks, nodes); err != nil {
				return &DiskError{Disk: diskLabel(ds), Err: err}
			}
			// Records whose frozen image was the child now find it in File.
			if err := d.renameImage(ctx, s.Name, m.child, ds.File); err != nil {
				return err
			}
		}
		for _, f := range m.drop {
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove merged overlay: %w", err)
			}
		}
	}
	if s.Memory.File != "" {
		if err := os.Remove(s.Memory.File); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove memory file: %w", err)
		}
	}
	return nil
}

func without(list []string, v string) []string {
	var out []string
	for _, x := range list {
		if x != v {
			out = append(out, x)
		}
	}
	return out
}

// mergeOverlay commits overlay into base: online with block-commit when
// QEMU has the overlay open, else with qemu-img, rebasing the overlay's
// children (kids) onto base.
func (d *Domain) mergeOverlay(ctx context.Context, base, overlay string, kids []string, disks []Disk, nodes map[string]string) error {
	for _, dk := range disks {
		if dk.File != overlay && !slicesContains(dk.Backing, overlay) {
			continue
		}
		baseNode, ok := nodes[base]
		if !ok {
			return fmt.Errorf("QEMU has no node for %s", base)
		}
		if dk.File == overlay {
			return d.blockCommit(ctx, dk.Node, "", baseNode)
		}
		top, ok := nodes[overlay]
		if !ok {
			return fmt.Errorf("QEMU has no node for %s", overlay)
		}
		return d.blockCommit(ctx, dk.Node, top, baseNode)
	}
	// Not open in QEMU: merge the files.
	for _, k := range kids {
		if d.inUse(disks, k) {
			return fmt.Errorf("%w: %s is backed by %s but QEMU does not have that open", ErrInconsistent, k, overlay)
		}
	}
	if err := d.qemuImg(ctx, "commit", "-q", "-d", "--", overlay); err != nil {
		return err
	}
	baseFmt := "qcow2"
	if fa, err := d.imageFacts(ctx, base); err == nil {
		baseFmt = fa.Format
	}
	for _, k := range kids {
		if err := d.qemuImg(ctx, "rebase", "-q", "-u", "-F", baseFmt, "-b", base, "--", k); err != nil {
			return fmt.Errorf("rebase %s onto %s: %w", k, base, err)
		}
	}
	return nil
}

func (d *Domain) inUse(disks []Disk, file string) bool {
	for _, dk := range disks {
		if dk.File == file || slicesContains(dk.Backing, file) {
			return true
		}
	}
	return false
}

// renameImage points the records (other than skip) that name image from
// at image to.
func (d *Domain) renameImage(ctx context.Context, skip, from, to string) error {
	recs, err := d.store.List(ctx, d.uuid)
	if err != nil && len(recs) == 0 {
		return err
	}
	for _, r := range recs {
		if r.Name == skip {
			continue
		}
		changed := false
		for i := range r.Disks {
			if r.Disks[i].File == from {
				r.Disks[i].File = to
				changed = true
			}
		}
		if changed {
			if err := d.store.Put(ctx, d.uuid, r); err != nil {
				return err
			}
		}
	}
	return nil
}
