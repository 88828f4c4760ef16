package qemuimg_test

import (
	"fmt"

	"github.com/vmsnap/vmsnap/internal/qemuimg"
)

// The same parser reads `qemu-img info --output=json` and query-block's
// inserted.image; a relative backing file is resolved against the image's
// directory.
func ExampleParse() {
	info, err := qemuimg.Parse([]byte(`{
		"filename": "/images/top.qcow2", "format": "qcow2", "virtual-size": 67108864,
		"backing-filename": "base.qcow2", "backing-filename-format": "qcow2",
		"snapshots": [{"id": "1", "name": "s1", "vm-state-size": 0,
			"date-sec": 1700000000, "date-nsec": 0, "vm-clock-sec": 2, "vm-clock-nsec": 500000000}]
	}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	s, _ := info.Snapshot("s1")
	fmt.Println(info.Format, info.VirtualSize, info.Backing, s.ID, s.VMClock())
	// Output: qcow2 67108864 /images/base.qcow2 1 2.5s
}
