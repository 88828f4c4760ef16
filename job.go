package vmsnap

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/vmsnap/vmsnap/qmp"
)

// jobSeq makes job ids unique within the process; QEMU refuses a job id
// that is in use.
var jobSeq atomic.Uint64

func newJobID(kind string) string {
	return fmt.Sprintf("vmsnap-%s-%d-%d", kind, time.Now().UnixNano(), jobSeq.Add(1))
}

type qmpJobInfo struct {
	ID              string `json:"id"`
	Type            string `json:"type"`
	Status          string `json:"status"`
	CurrentProgress uint64 `json:"current-progress"`
	TotalProgress   uint64 `json:"total-progress"`
	Error           string `json:"error"`
}

// jobPollInterval is how often a running job's progress is read.
const jobPollInterval = 100 * time.Millisecond

// runJob starts a QEMU job with command and args (which get "job-id": id), waits
// until it concludes, reads its error from query-jobs (QEMU reports it only
// there), dismisses it and returns a *JobError if it failed. progress, if
// not nil, receives the job's progress while it runs; observe, if not nil,
// sees every event that arrives while waiting, in order.
//
// ctx ending does not abandon the job: QEMU's snapshot jobs cannot be
// interrupted, so runJob waits for the job to conclude (bounded by the
// monitor: a lost connection ends the wait with qmp.ErrClosed) and the
// caller rolls back. It returns ctx's error in that case only when the job
// itself succeeded.
func runJob(ctx context.Context, mon qmp.Monitor, id, command string, args map[string]any, progress func(cur, total uint64), observe func(qmp.Event)) error {
	return runJobSpec(ctx, mon, jobSpec{id: id, command: command, args: args, progress: progress, observe: observe})
}

// jobSpec describes a job for runJobSpec.
type jobSpec struct {
	id, command string
	args        map[string]any
	progress    func(cur, total uint64)
	observe     func(qmp.Event)
	// completeWhenReady sends job-complete when the job reports "ready"
	// (an active block-commit or a mirror waits there for it).
	completeWhenReady bool
	// keep leaves a successful job concluded in QEMU, undismissed, as
	// evidence for reconciliation until the caller has recorded its
	// outcome and dismisses it.
	keep bool
}

// runJobSpec is runJob with every option.
func runJobSpec(ctx context.Context, mon qmp.Monitor, spec jobSpec) error {
	id, command, args, progress, observe := spec.id, spec.command, spec.args, spec.progress, spec.observe
	// The wait must outlive a cancelled ctx: the job goes on in QEMU.
	wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	events, err := mon.Subscribe(wctx)
	if err != nil {
		return err
	}
	args["job-id"] = id
	if err := mon.Execute(wctx, command, args, nil); err != nil {
		return err
	}
	tick := time.NewTicker(jobPollInterval)
	defer tick.Stop()
	var info *qmpJobInfo
	// polled is set when query-jobs showed the job concluded before its
	// event was read; the event still comes (after every event the job
	// caused), so it is awaited a little longer before giving up on it.
	var polled *qmpJobInfo
	var grace <-chan time.Time
	for info == nil {
		select {
		case ev, ok := <-events:
			if !ok {
				return fmt.Errorf("waiting for job %s: %w", id, qmp.ErrClosed)
			}
			if observe != nil {
				observe(ev)
			}
			if ev.Name != "JOB_STATUS_CHANGE" {
				continue
			}
			var data struct {
				ID     string `json:"id"`
				Status string `json:"status"`
			}
			if ev.DecodeData(&data) != nil || data.ID != id {
				continue
			}
			if data.Status == "ready" && spec.completeWhenReady {
				if err := mon.Execute(wctx, "job-complete", map[string]any{"id": id}, nil); err != nil {
					return fmt.Errorf("complete job %s: %w", id, err)
				}
				continue
			}
			if data.Status != "concluded" {
				continue
			}
			if info, err = findJob(wctx, mon, id); err != nil {
				return err
			}
		case <-tick.C:
			j, err := findJob(wctx, mon, id)
			if err != nil {
				return err
			}
			if progress != nil && j.TotalProgress > 0 {
				progress(j.CurrentProgress, j.TotalProgress)
			}
			if j.Status == "concluded" && polled == nil {
				polled = j
				grace = time.After(time.Second)
			}
		case <-grace:
			info = polled
		}
	}
	if progress != nil && info.TotalProgress > 0 {
		progress(info.CurrentProgress, info.TotalProgress)
	}
	var dismissErr error
	if !spec.keep || info.Error != "" {
		dismissErr = mon.Execute(wctx, "job-dismiss", map[string]any{"id": id}, nil)
	}
	if info.Error != "" {
		return &JobError{ID: id, Type: info.Type, Msg: info.Error}
	}
	if dismissErr != nil {
		return fmt.Errorf("dismiss job %s: %w", id, dismissErr)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: job %s ran to its end: %w", ErrCanceled, id, err)
	}
	return nil
}

// findJob returns the job with the given id from query-jobs.
func findJob(ctx context.Context, mon qmp.Monitor, id string) (*qmpJobInfo, error) {
	var jobs []qmpJobInfo
	if err := mon.Execute(ctx, "query-jobs", nil, &jobs); err != nil {
		return nil, err
	}
	for i := range jobs {
		if jobs[i].ID == id {
			return &jobs[i], nil
		}
	}
	return nil, fmt.Errorf("job %s vanished from query-jobs", id)
}
