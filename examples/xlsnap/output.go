package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/vmsnap/vmsnap"
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
func printPlain(w io.Writer, l *vmsnap.Listing) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "Name\tCreation time\t")
	for _, s := range l.Snapshots {
		fmt.Fprintf(tw, "%s\t%s\t\n", s.Name, showTime(s.CreationTime))
	}
	for _, u := range l.Untracked {
		fmt.Fprintf(tw, "%s\t%s\t(untracked)\n", u.Name, showTime(untrackedTime(u)))
	}
	tw.Flush()
}

// printLong prints every field of every snapshot, a blank line between.
func printLong(w io.Writer, l *vmsnap.Listing) {
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
	for _, u := range l.Untracked {
		if len(l.Snapshots) > 0 {
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
func printTree(w io.Writer, l *vmsnap.Listing) {
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
		Problems:     append([]string{}, s.Problems...),
		DowntimeMS:   float64(s.Downtime.Microseconds()) / 1000,
	}
	for _, d := range s.Disks {
		j.Disks = append(j.Disks, jsonDisk{
			Device: d.Device, File: d.File, Kind: string(d.Kind), ID: d.ID, Name: d.Name, Overlay: d.Overlay,
			VMStateSize: d.VMStateSize, Date: jsonTime(d.Date), VMClock: vmClock(d.VMClock),
		})
	}
	return j
}

// printJSON prints the recorded snapshots as a JSON array.
func printJSON(w io.Writer, l *vmsnap.Listing) error {
	out := []jsonSnapshot{}
	for _, s := range l.Snapshots {
		out = append(out, toJSON(s))
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	return nil
}
