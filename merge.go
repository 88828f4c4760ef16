package vmsnap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vmsnap/vmsnap/internal/merge"
	"github.com/vmsnap/vmsnap/internal/qemu"
	"github.com/vmsnap/vmsnap/internal/qemuimg"
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
//
// The executor of external deletes. internal/merge plans (a pure function
// of the image graph, QEMU's chains and the records: which child is merged
// into each frozen image, how, what is rebased, repointed and removed, or
// why not); this file gathers its input and carries the plan out, marking
// each disk's progress on the record (intent.go) so that a crash at any
// point is finished by the next run:
//
//   - before a merge starts, the record names the child and the QEMU job
//     (labels vmsnap.merging.N and vmsnap.merging-job.N);
//   - a job an earlier run left in QEMU is settled before planning: a
//     "ready" commit is completed, a concluded one dismissed, so a second
//     job is never started on a device that has one;
//   - the planner is told whether the QEMU that ran the merge still runs
//     (its job is still listed): only then is a backing link QEMU rewrote
//     taken as proof that the merge reached the frozen image; otherwise
//     the link is put back and the merge redone (writing the same child
//     into the frozen image twice gives the same image);
//   - once a disk is done it is marked Removed, and a rerun skips it.

// Labels of the merge progress marks on a record being deleted.
const (
	labelMerging    = "vmsnap.merging."
	labelMergingJob = "vmsnap.merging-job."
)

// mergeStepTimeout bounds how long settling a leftover job may wait.
const mergeStepTimeout = 10 * time.Minute

// deleteExternal merges away external snapshot r's layers and removes its
// memory file and the revert overlays nothing uses. resume is true when r
// carries a delete intent an earlier run left.
func (d *Domain) deleteExternal(ctx context.Context, r *store.Record, disks []Disk, resume bool) error {
	sameQEMU, err := d.settleMergeJobs(ctx, r)
	if err != nil {
		return err
	}
	if sameQEMU {
		if disks, err = d.disks(ctx); err != nil {
			return err
		}
	}
	recs, err := d.records(ctx)
	if err != nil {
		return err
	}
	in, err := d.mergeInput(ctx, r, recs, disks)
	if err != nil {
		return err
	}
	in.Resume, in.SameQEMU = resume, sameQEMU
	plan, err := merge.PlanDelete(in)
	if err != nil {
		return err
	}
	if bad := d.unprovenMergeFiles(r, recs, in, plan); len(bad) > 0 {
		return errUnproven("snapshot "+strconv.Quote(r.Name), bad)
	}
	var nodes map[string]string
	if d.online() {
		if nodes, err = d.nodesByFile(ctx); err != nil {
			return err
		}
	}
	for _, dp := range plan.Disks {
		if dp.Action == merge.ActionDone {
			continue
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%w before disk %s: %w", ErrCanceled, dp.Device, err)
		}
		// A merge that has started is seen to its end, with its
		// bookkeeping, under a context that is not cancelled.
		if err := d.runDiskMerge(context.WithoutCancel(ctx), r, dp, disks, nodes); err != nil {
			return &DiskError{Disk: dp.Device, Err: err}
		}
	}
	if f := r.Memory.File; f != "" {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove memory file: %w", err)
		}
	}
	var errs []error
	for _, f := range plan.RevertOverlays {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove revert overlay: %w", err))
		}
	}
	return errors.Join(errs...)
}

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

// runDiskMerge carries out one disk's plan.
func (d *Domain) runDiskMerge(ctx context.Context, r *store.Record, dp merge.DiskPlan, disks []Disk, nodes map[string]string) error {
	if dp.Action == merge.ActionMerge {
		for _, img := range dp.Relink {
			if err := d.rebase(ctx, img, dp.Child); err != nil {
				return err
			}
		}
		jobID := ""
		if dp.Method != merge.MethodOfflineCommit {
			jobID = qemu.NewJobID("commit")
		}
		if err := d.markMerging(ctx, r, dp.Index, dp.Child, jobID); err != nil {
			return err
		}
		if err := d.mergeChild(ctx, dp, jobID, disks, nodes); err != nil {
			return err
		}
		if dp.Method != merge.MethodOfflineCommit {
			d.dropStaleNodes(ctx, dp.Child)
		}
	}
	for _, img := range dp.Rebase {
		if err := d.rebase(ctx, img, dp.Frozen); err != nil {
			return err
		}
	}
	if err := d.repointDisks(ctx, dp.Repoint, dp.Frozen); err != nil {
		return err
	}
	for _, f := range dp.Garbage {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove merged image: %w", err)
		}
	}
	jobID := r.Labels[labelMergingJob+strconv.Itoa(dp.Index)]
	if err := d.markDiskDeleted(ctx, r, dp.Index); err != nil {
		return err
	}
	if jobID != "" && d.online() {
		_ = qemu.Dismiss(ctx, d.mon, jobID)
	}
	return nil
}

// mergeChild merges dp.Child into dp.Frozen by the planned method.
func (d *Domain) mergeChild(ctx context.Context, dp merge.DiskPlan, jobID string, disks []Disk, nodes map[string]string) error {
	if dp.Method == merge.MethodOfflineCommit {
		return d.img.Commit(ctx, dp.Child)
	}
	base, ok := nodes[dp.Frozen]
	if !ok {
		return fmt.Errorf("%w: QEMU has no node for %s", ErrInconsistent, dp.Frozen)
	}
	device := ""
	for _, dk := range disks {
		if dk.File == dp.Child || containsString(dk.Backing, dp.Child) {
			device = dk.Node
		}
	}
	if device == "" {
		return fmt.Errorf("%w: QEMU runs no disk on %s", ErrInconsistent, dp.Child)
	}
	top := ""
	if dp.Method == merge.MethodIntermediateCommit {
		if top, ok = nodes[dp.Child]; !ok {
			return fmt.Errorf("%w: QEMU has no node for %s", ErrInconsistent, dp.Child)
		}
	}
	args := map[string]any{"device": device, "base-node": base, "auto-dismiss": false}
	if top != "" {
		args["top-node"] = top
	}
	// The concluded job is kept in QEMU until the disk's bookkeeping is
	// done: a rerun after a crash in between finds it, and knows the QEMU
	// that merged still runs (see settleMergeJobs).
	return qemu.RunJob(ctx, d.mon, qemu.Job{ID: jobID, Command: "block-commit", Args: args, CompleteWhenReady: top == "", Keep: true})
}

// dropStaleNodes removes from QEMU's graph the nodes still open on image
// after a commit merged it away. QEMU drops the nodes it made itself, but
// nodes declared on the command line (-blockdev) belong to the monitor and
// stay, holding the merged file open and keeping the disk's new root from
// being a root node ("Need a root block node" on the next snapshot).
// Nodes still in use refuse blockdev-del; that is fine.
func (d *Domain) dropStaleNodes(ctx context.Context, image string) {
	nodes, err := qemu.NamedNodes(ctx, d.mon)
	if err != nil {
		return
	}
	var format, protocol []string
	for _, n := range nodes {
		if n.File != image || n.Node == "" || strings.HasPrefix(n.Node, "#") {
			continue
		}
		if n.Driver == "file" || n.Driver == "host_device" {
			protocol = append(protocol, n.Node)
		} else {
			format = append(format, n.Node)
		}
	}
	for _, n := range append(format, protocol...) {
		_ = qemu.BlockdevDel(ctx, d.mon, n)
	}
}

// settleMergeJobs brings to an end the commit jobs an earlier run of this
// delete left in QEMU (named by the record's merging-job labels): a job
// waiting in "ready" is completed, a running one awaited, a concluded one
// dismissed. It reports whether any such job was found: then the QEMU that
// ran the merge is the one running now.
func (d *Domain) settleMergeJobs(ctx context.Context, r *store.Record) (bool, error) {
	if !d.online() {
		return false, nil
	}
	found := false
	for k, id := range r.Labels {
		if !strings.HasPrefix(k, labelMergingJob) || id == "" {
			continue
		}
		err := d.settleJob(ctx, id)
		switch {
		case errors.Is(err, qemu.ErrNoJob):
			continue
		case err != nil:
			return false, err
		}
		found = true
	}
	return found, nil
}

// settleJob waits for job id to conclude, completing it when it waits in
// "ready", and dismisses it. A job that failed is dismissed too; the
// planner then sees the graph the failure left.
func (d *Domain) settleJob(ctx context.Context, id string) error {
	wctx, cancel := context.WithTimeout(ctx, mergeStepTimeout)
	defer cancel()
	for {
		j, err := qemu.FindJob(wctx, d.mon, id)
		if err != nil {
			return err
		}
		switch j.Status {
		case "ready":
			if err := qemu.Complete(wctx, d.mon, id); err != nil {
				return fmt.Errorf("complete the commit an earlier run left: %w", err)
			}
		case "concluded", "null":
			return qemu.Dismiss(wctx, d.mon, id)
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("%w: the commit job %s an earlier run left did not end: %w", ErrBusy, id, wctx.Err())
		case <-time.After(qemu.JobPollInterval):
		}
	}
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
			mr.Disks = append(mr.Disks, merge.Disk{Device: dd.Device, Kind: dd.Kind, File: dd.File, Overlay: dd.Overlay, Removed: dd.Removed, Merging: rr.Labels[labelMerging+strconv.Itoa(i)]})
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

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
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
