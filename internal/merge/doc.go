// Package merge plans the deletion of an external snapshot: which image is
// merged into which, by which of QEMU's or qemu-img's mechanisms, which
// images are rebased and which records repointed afterwards, and which
// files become garbage. It is pure: it reads a description of the image
// graph, of the chains the domain runs on and of the snapshot records,
// and it neither runs QEMU or qemu-img nor touches a file or a store. The
// engine's executor gathers the description, calls PlanDelete, and carries out
// the plan disk by disk.
//
// # The rules
//
// An external snapshot S of a disk froze an image F (the record's File)
// and put an overlay O (the record's Overlay) on top of it, so F holds S's
// point in time and the layers above hold what came after. Deleting S
// merges F's one live child C into F: F then holds what C held, C goes,
// whatever was backed by C is backed by F, and a snapshot whose frozen
// image was C now finds that content in F, so its record is repointed.
//
// An image is live when the domain runs on it (it is in one of the chains
// of Input.Chains) or a record other than S names it as a frozen image or
// overlay of a disk that is not Removed. S's own frozen images are live
// too. S's own overlay O is live unless a revert left it behind: nothing
// runs on it, no other snapshot froze it and no image is backed by it.
// Then it holds only state the revert discarded, and it goes with S.
//
// Per disk of S, exactly one of:
//   - the disk is Removed: an earlier run of this delete finished it
//     (ActionDone);
//   - F has no live child: nothing is merged, O goes if dead
//     (ActionNothing);
//   - F has one live child C: C is merged into F (ActionMerge), by an
//     active commit when C is QEMU's active layer, an intermediate commit
//     when C is lower in QEMU's chain, and qemu-img commit plus qemu-img
//     rebase -u of C's children when QEMU does not have C open;
//   - an earlier run of this delete merged C already and only its
//     bookkeeping is left (ActionFinish, see Classify);
//   - a refusal (*Refusal), for the reasons of Reason.
//
// Nothing is ever merged into an image that backs two live branches (made
// by reverts) or that is another snapshot's frozen image: the merge would
// change what the other branch or snapshot sees. All disks are checked
// before any is planned: one refusal refuses the whole plan.
package merge
