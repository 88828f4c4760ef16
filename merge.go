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
	// labelMergingPivot + disk index: the active commit of that disk was
	// about to be completed (merge.Disk.Pivoting).
	labelMergingPivot = "vmsnap.merging-pivot."
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
		if err := d.mergeChild(ctx, r, dp, jobID, disks, nodes); err != nil {
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
func (d *Domain) mergeChild(ctx context.Context, r *store.Record, dp merge.DiskPlan, jobID string, disks []Disk, nodes map[string]string) error {
	if dp.Method == merge.MethodOfflineCommit {
		return d.img.Commit(ctx, dp.Child)
	}
	base, ok := nodes[dp.Frozen]
	if !ok {
		return fmt.Errorf("%w: QEMU has no node for %s", ErrInconsistent, dp.Frozen)
	}
	device := ""
	for _, dk := range disks {
		if dk.File == dp.Child || slices.Contains(dk.Backing, dp.Child) {
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
	// Before QEMU switches the disk onto the frozen image, the pivot mark:
	// a QEMU killed after the switch restarted on the frozen image then
	// runs on the finished merge (merge.Disk.Pivoting).
	pivot := func() error { return d.markPivot(ctx, r, dp.Index) }
	return qemu.RunJob(ctx, d.mon, qemu.Job{ID: jobID, Command: "block-commit", Args: args, CompleteWhenReady: top == "", BeforeComplete: pivot, Keep: true})
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
		if qemuimg.PlainFilename(n.File) != image || n.Node == "" || strings.HasPrefix(n.Node, "#") {
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
		idx, _ := strconv.Atoi(strings.TrimPrefix(k, labelMergingJob))
		err := d.settleJob(ctx, id, func() error { return d.markPivot(ctx, r, idx) })
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
func (d *Domain) settleJob(ctx context.Context, id string, beforeComplete func() error) error {
	wctx, cancel := context.WithTimeout(ctx, mergeStepTimeout)
	defer cancel()
	for {
		j, err := qemu.FindJob(wctx, d.mon, id)
		if err != nil {
			return err
		}
		switch j.Status {
		case "ready":
			if err := beforeComplete(); err != nil {
				return err
			}
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
