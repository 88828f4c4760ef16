package qemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/vmsnap/vmsnap/internal/sentinel"
	"github.com/vmsnap/vmsnap/qmp"
)

// JobError is a QEMU job (snapshot-save, snapshot-load, snapshot-delete, a
// block job) that concluded with an error; QEMU reports the message only in
// query-jobs.
type JobError struct {
	ID   string // job id
	Type string // job type, e.g. "snapshot-save"
	Msg  string // QEMU's error message
}

// Error returns QEMU's message with the job's id and type.
func (e *JobError) Error() string { return fmt.Sprintf("job %s (%s) failed: %s", e.ID, e.Type, e.Msg) }

// NewJobID returns a job id for a job of the given kind ("save", "load",
// "commit", ...) that no other job has: QEMU refuses an id in use, also
// by a concluded job not yet dismissed. It is "vmsnap-<kind>-<time>-<random>".
func NewJobID(kind string) string {
	var b [4]byte
	rand.Read(b[:]) // never returns an error (it crashes the program instead)
	return fmt.Sprintf("vmsnap-%s-%d-%s", kind, time.Now().UnixNano(), hex.EncodeToString(b[:]))
}

// JobInfo is one job as query-jobs reports it (QAPI JobInfo).
type JobInfo struct {
	// ID is the job's id.
	ID string `json:"id"`
	// Type is the job type: "snapshot-save", "commit", ...
	Type string `json:"type"`
	// Status is the job's state: "created", "running", "ready",
	// "waiting", "pending", "aborting", "concluded", "null", ...
	Status string `json:"status"`
	// CurrentProgress and TotalProgress measure the work done, in units
	// of the job's choosing (bytes for the snapshot and block jobs).
	CurrentProgress uint64 `json:"current-progress"`
	TotalProgress   uint64 `json:"total-progress"`
	// Error is the failure of a concluded job; empty on success.
	Error string `json:"error,omitempty"`
}

// Err returns the job's failure as a *JobError, or nil.
func (j *JobInfo) Err() error {
	if j.Error == "" {
		return nil
	}
	return &JobError{ID: j.ID, Type: j.Type, Msg: j.Error}
}

// QueryJobs runs query-jobs.
func QueryJobs(ctx context.Context, mon qmp.Monitor) ([]JobInfo, error) {
	var jobs []JobInfo
	if err := mon.Execute(ctx, "query-jobs", nil, &jobs); err != nil {
		return nil, err
	}
	return jobs, nil
}

// ErrNoJob means QEMU has no job of the id asked for: it was dismissed,
// never started, or this is another QEMU process.
var ErrNoJob = errors.New("no such job")

// FindJob returns the job with the given id from query-jobs; an error
// wrapping ErrNoJob when QEMU has no such job.
func FindJob(ctx context.Context, mon qmp.Monitor, id string) (*JobInfo, error) {
	jobs, err := QueryJobs(ctx, mon)
	if err != nil {
		return nil, err
	}
	for i := range jobs {
		if jobs[i].ID == id {
			return &jobs[i], nil
		}
	}
	return nil, fmt.Errorf("job %s vanished from query-jobs: %w", id, ErrNoJob)
}

// JobPollInterval is how often a running job's state is read.
const JobPollInterval = 100 * time.Millisecond

// WaitJob polls the job with the given id until it concludes (or reaches
// "null") and returns its last state. Unlike RunJob it ends when ctx
// does. It is for a job started earlier, e.g. by a process that crashed.
func WaitJob(ctx context.Context, mon qmp.Monitor, id string) (*JobInfo, error) {
	for {
		j, err := FindJob(ctx, mon, id)
		if err != nil {
			return nil, err
		}
		if j.Status == "concluded" || j.Status == "null" {
			return j, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(JobPollInterval):
		}
	}
}

// Dismiss removes a concluded job from query-jobs (job-dismiss).
func Dismiss(ctx context.Context, mon qmp.Monitor, id string) error {
	return mon.Execute(ctx, "job-dismiss", map[string]any{"id": id}, nil)
}

// Complete tells a job waiting in "ready" (an active block-commit, a
// mirror) to finish (job-complete).
func Complete(ctx context.Context, mon qmp.Monitor, id string) error {
	return mon.Execute(ctx, "job-complete", map[string]any{"id": id}, nil)
}

// Cancel asks a job to stop (job-cancel). Block jobs honour it; QEMU's
// snapshot-save, -load and -delete jobs cannot be interrupted and run on.
func Cancel(ctx context.Context, mon qmp.Monitor, id string) error {
	return mon.Execute(ctx, "job-cancel", map[string]any{"id": id}, nil)
}

// Job describes a job for RunJob.
type Job struct {
	// ID is the job's id (see NewJobID); RunJob adds it to Args as
	// "job-id".
	ID string
	// Command starts the job ("snapshot-save", "block-commit", ...) with
	// Args; RunJob does not change the map.
	Command string
	Args    map[string]any
	// Progress, if not nil, receives the job's progress while it runs.
	Progress func(cur, total uint64)
	// Observe, if not nil, sees every event that arrives while RunJob
	// waits, in order (STOP and RESUME tell the guest's downtime).
	Observe func(qmp.Event)
	// CompleteWhenReady sends job-complete when the job reports "ready"
	// (an active block-commit or a mirror waits there for it).
	CompleteWhenReady bool
	// BeforeComplete, when not nil, runs just before job-complete is
	// sent; its error stops RunJob (the job is left ready in QEMU).
	BeforeComplete func() error
	// Concluded, if not nil, is called once when RunJob learns that the
	// job concluded (from its event, or from a poll of query-jobs), before
	// RunJob sends the query-jobs whose answer it returns and job-dismiss:
	// a caller's own queries started from it are pipelined with RunJob's
	// last commands and see QEMU as the job left it, whether the job
	// succeeded or not.
	Concluded func()
	// Keep leaves a successful job concluded in QEMU, undismissed, as
	// evidence for reconciliation until the caller has recorded its
	// outcome and calls Dismiss. A failed job is always dismissed.
	Keep bool
}

// RunJob starts job, waits until it concludes, reads its error from
// query-jobs (QEMU reports it only there), dismisses it (unless Keep and
// successful) and returns a *JobError if it failed.
//
// ctx ending does not abandon the job: QEMU's snapshot jobs cannot be
// interrupted, so RunJob waits for the job to conclude (bounded by the
// monitor: a lost connection ends the wait with an error wrapping
// qmp.ErrClosed) and the caller rolls back. When ctx ended but the job
// succeeded, RunJob returns an error wrapping sentinel.ErrCanceled and
// ctx's error: the job's work is done, and the caller decides whether to
// keep or undo it. A failed job's *JobError wins over the cancellation.
func RunJob(ctx context.Context, mon qmp.Monitor, job Job) error {
	id := job.ID
	// The wait must outlive a cancelled ctx: the job goes on in QEMU.
	wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	events, err := mon.Subscribe(wctx)
	if err != nil {
		return err
	}
	args := maps.Clone(job.Args)
	if args == nil {
		args = map[string]any{}
	}
	args["job-id"] = id
	if err := mon.Execute(wctx, job.Command, args, nil); err != nil {
		return err
	}
	tick := time.NewTicker(JobPollInterval)
	defer tick.Stop()
	var info *JobInfo
	// polled is set when query-jobs showed the job concluded before its
	// event was read; the event still comes (after every event the job
	// caused), so it is awaited a little longer before giving up on it.
	var polled *JobInfo
	var grace <-chan time.Time
	for info == nil {
		select {
		case ev, ok := <-events:
			if !ok {
				return fmt.Errorf("waiting for job %s: %w", id, qmp.ErrClosed)
			}
			if job.Observe != nil {
				job.Observe(ev)
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
			if data.Status == "ready" && job.CompleteWhenReady {
				if job.BeforeComplete != nil {
					if err := job.BeforeComplete(); err != nil {
						return fmt.Errorf("before completing job %s: %w", id, err)
					}
				}
				if err := Complete(wctx, mon, id); err != nil {
					return fmt.Errorf("complete job %s: %w", id, err)
				}
				continue
			}
			if data.Status != "concluded" {
				continue
			}
			if job.Concluded != nil && polled == nil {
				job.Concluded()
			}
			if info, err = FindJob(wctx, mon, id); err != nil {
				return err
			}
		case <-tick.C:
			j, err := FindJob(wctx, mon, id)
			if err != nil {
				return err
			}
			if job.Progress != nil && j.TotalProgress > 0 {
				job.Progress(j.CurrentProgress, j.TotalProgress)
			}
			if j.Status == "concluded" && polled == nil {
				if job.Concluded != nil {
					job.Concluded()
				}
				polled = j
				grace = time.After(time.Second)
			}
		case <-grace:
			info = polled
		}
	}
	if job.Progress != nil && info.TotalProgress > 0 {
		job.Progress(info.CurrentProgress, info.TotalProgress)
	}
	var dismissErr error
	if !job.Keep || info.Error != "" {
		dismissErr = Dismiss(wctx, mon, id)
	}
	if err := info.Err(); err != nil {
		return err
	}
	if dismissErr != nil {
		return fmt.Errorf("dismiss job %s: %w", id, dismissErr)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: job %s ran to its end: %w", sentinel.ErrCanceled, id, err)
	}
	return nil
}
