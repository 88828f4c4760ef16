package xlsnapcli

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/store"
)

// timeLayout is how text output shows times: local time, to the second.
const timeLayout = "2006-01-02 15:04:05 -0700"

// only keeps the snapshot called name (recorded or untracked).
func only(l *vmsnap.Listing, name string) *vmsnap.Listing {
	out := &vmsnap.Listing{Current: l.Current}
	for _, s := range l.Snapshots {
		if s.Name == name {
			out.Snapshots = append(out.Snapshots, s)
		}
	}
	for _, u := range l.Untracked {
		if u.Name == name {
			out.Untracked = append(out.Untracked, u)
		}
	}
	return out
}

// unreadable are the records a listing could not read: each concerns its
// own snapshot only and is shown as a problem entry.
type unreadable []*store.RecordError

// splitRecordErrors separates, in a List error, the records that could not
// be read from the rest: other is nil when err is made of
// *store.RecordError values only (joined and wrapped, as List returns
// them), else err itself.
func splitRecordErrors(err error) (bad unreadable, other error) {
	if err == nil {
		return nil, nil
	}
	onlyRecords := true
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) {
		case nil:
		case *store.RecordError:
			bad = append(bad, e)
		case interface{ Unwrap() []error }:
			for _, b := range e.Unwrap() {
				walk(b)
			}
		case interface{ Unwrap() error }:
			if inner := e.Unwrap(); inner != nil {
				walk(inner)
			} else {
				onlyRecords = false
			}
		default:
			onlyRecords = false
		}
	}
	walk(err)
	if !onlyRecords || len(bad) == 0 {
		return bad, err
	}
	return bad, nil
}

// badName is how a listing names an unreadable record: its snapshot name, or its path
// when the file name maps to no valid snapshot name.
func badName(e *store.RecordError) string {
	if e.Name != "" {
		return e.Name
	}
	return e.Path
}

// only keeps the unreadable record of snapshot name.
func (u unreadable) only(name string) unreadable {
	var out unreadable
	for _, e := range u {
		if e.Name == name {
			out = append(out, e)
		}
	}
	return out
}

// badProblem is the one-line reason an unreadable record is shown for.
func badProblem(e *store.RecordError) string {
	return "the record cannot be read: " + oneLine(e.Error())
}

// untrackedTime is the earliest date among the disks holding u.
func untrackedTime(u vmsnap.Untracked) time.Time {
	var t time.Time
	for _, d := range u.Disks {
		if t.IsZero() || (!d.Date.IsZero() && d.Date.Before(t)) {
			t = d.Date
		}
	}
	return t
}

func showTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(timeLayout)
}

// printPlain prints one snapshot per line, as xl list does.
func printPlain(w io.Writer, l *vmsnap.Listing, bad unreadable) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "Name\tCreation time\t")
	for _, s := range l.Snapshots {
		fmt.Fprintf(tw, "%s\t%s\t\n", s.Name, showTime(s.CreationTime))
	}
	for _, e := range bad {
		fmt.Fprintf(tw, "%s\t-\t(unreadable record: %s)\n", badName(e), oneLine(e.Error()))
	}
	for _, u := range l.Untracked {
		fmt.Fprintf(tw, "%s\t%s\t(untracked)\n", u.Name, showTime(untrackedTime(u)))
	}
	tw.Flush()
}

// printLong prints every field of every snapshot, a blank line between.
func printLong(w io.Writer, l *vmsnap.Listing, bad unreadable) {
	for i, s := range l.Snapshots {
		if i > 0 {
			fmt.Fprintln(w)
		}
		tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
		fmt.Fprintf(tw, "name:\t%s\n", s.Name)
		fmt.Fprintf(tw, "description:\t%s\n", s.Description)
		fmt.Fprintf(tw, "creation time:\t%s\n", showTime(s.CreationTime))
		fmt.Fprintf(tw, "state:\t%s\n", s.State)
		fmt.Fprintf(tw, "parent:\t%s\n", s.Parent)
		fmt.Fprintf(tw, "current:\t%v\n", s.Current)
		mem := string(s.Memory.Kind)
		if s.Memory.Node != "" {
			mem += " node=" + s.Memory.Node
		}
		if s.Memory.File != "" {
			mem += " file=" + s.Memory.File
		}
		fmt.Fprintf(tw, "memory:\t%s\n", mem)
		fmt.Fprintf(tw, "downtime:\t%v\n", s.Downtime)
		tw.Flush()
		for _, d := range s.Disks {
			fmt.Fprintf(w, "disk %s: kind=%s file=%s", d.Device, d.Kind, d.File)
			if d.Overlay != "" {
				fmt.Fprintf(w, " overlay=%s", d.Overlay)
			}
			fmt.Fprintf(w, " id=%s name=%s vm_state_size=%d date=%s vm_clock=%s\n",
				d.ID, d.Name, d.VMStateSize, showTime(d.Date), vmClock(d.VMClock))
		}
		for _, p := range s.Problems {
			fmt.Fprintf(w, "problem: %s\n", p)
		}
	}
	for i, e := range bad {
		if i > 0 || len(l.Snapshots) > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "name:          %s\nrecord:        %s\nproblem:       %s\n", badName(e), e.Path, badProblem(e))
	}
	for _, u := range l.Untracked {
		if len(l.Snapshots) > 0 || len(bad) > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "name:          %s\nuntracked:     in the images, no record (adopt it to manage it)\n", u.Name)
		for _, d := range u.Disks {
			fmt.Fprintf(w, "disk %s: file=%s id=%s vm_state_size=%d date=%s vm_clock=%s\n",
				d.Device, d.File, d.ID, d.VMStateSize, showTime(d.Date), vmClock(d.VMClock))
		}
	}
}

// printTree draws the snapshots by parent; "*" marks the current one.
func printTree(w io.Writer, l *vmsnap.Listing, bad unreadable) {
	var walk func(n *vmsnap.TreeNode, prefix, branch string)
	walk = func(n *vmsnap.TreeNode, prefix, branch string) {
		mark := ""
		if n.Snapshot.Current {
			mark = " *"
		}
		fmt.Fprintf(w, "%s%s%s  %s%s\n", prefix, branch, n.Snapshot.Name, showTime(n.Snapshot.CreationTime), mark)
		switch branch {
		case "├─ ":
			prefix += "│  "
		case "└─ ":
			prefix += "   "
		}
		for i, c := range n.Children {
			b := "├─ "
			if i == len(n.Children)-1 {
				b = "└─ "
			}
			walk(c, prefix, b)
		}
	}
	for _, r := range l.Tree() {
		walk(r, "", "")
	}
	for _, e := range bad {
		fmt.Fprintf(w, "%s  - (unreadable record: %s)\n", badName(e), oneLine(e.Error()))
	}
	for _, u := range l.Untracked {
		fmt.Fprintf(w, "%s  %s (untracked)\n", u.Name, showTime(untrackedTime(u)))
	}
}

// vmClock shows a guest clock as HH:MM:SS.mmm, as qemu-img snapshot -l does.
func vmClock(d time.Duration) string {
	ms := d.Milliseconds()
	return fmt.Sprintf("%02d:%02d:%02d.%03d", ms/3600000, ms/60000%60, ms/1000%60, ms%1000)
}

// jsonTime is RFC 3339 in UTC, "" for the zero time.
func jsonTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// jsonSnapshot is one element of snapshot-list --json.
type jsonSnapshot struct {
	Name         string     `json:"name"`
	Description  string     `json:"description"`
	CreationTime string     `json:"creation_time"`
	State        string     `json:"state"`
	Parent       string     `json:"parent"`
	Current      bool       `json:"current"`
	Memory       jsonMemory `json:"memory"`
	Disks        []jsonDisk `json:"disks"`
	Problems     []string   `json:"problems"`
	DowntimeMS   float64    `json:"downtime_ms"`
}

type jsonMemory struct {
	Kind string `json:"kind"`
	Node string `json:"node"`
	File string `json:"file"`
}

type jsonDisk struct {
	Device      string `json:"device"`
	File        string `json:"file"`
	Kind        string `json:"kind"`
	ID          string `json:"id"`
	Name        string `json:"name"`
	Overlay     string `json:"overlay"`
	VMStateSize uint64 `json:"vm_state_size"`
	Date        string `json:"date"`
	VMClock     string `json:"vm_clock"`
}

func toJSON(s *vmsnap.DomainSnapshot) jsonSnapshot {
	j := jsonSnapshot{
		Name:         s.Name,
		Description:  s.Description,
		CreationTime: jsonTime(s.CreationTime),
		State:        string(s.State),
		Parent:       s.Parent,
		Current:      s.Current,
		Memory:       jsonMemory{Kind: string(s.Memory.Kind), Node: s.Memory.Node, File: s.Memory.File},
		Disks:        []jsonDisk{},
		Problems:     []string{},
		DowntimeMS:   float64(s.Downtime.Microseconds()) / 1000,
	}
	for _, p := range s.Problems {
		j.Problems = append(j.Problems, fmt.Sprint(p))
	}
	for _, d := range s.Disks {
		j.Disks = append(j.Disks, jsonDisk{
			Device: d.Device, File: d.File, Kind: string(d.Kind), ID: d.ID, Name: d.Name, Overlay: d.Overlay,
			VMStateSize: d.VMStateSize, Date: jsonTime(d.Date), VMClock: vmClock(d.VMClock),
		})
	}
	return j
}

// printJSON prints the recorded snapshots as a JSON array, the records
// that cannot be read as objects with state "unreadable".
func printJSON(w io.Writer, l *vmsnap.Listing, bad unreadable) error {
	out := []jsonSnapshot{}
	for _, s := range l.Snapshots {
		out = append(out, toJSON(s))
	}
	for _, e := range bad {
		out = append(out, jsonSnapshot{Name: e.Name, State: "unreadable", Disks: []jsonDisk{}, Problems: []string{badProblem(e)}})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	return nil
}
