/*
 * merge.h — iterators that combine others.
 *
 * merge_iter: a k-way merge of n child iterators into one in ikey_cmp order (newest version of a key first, since
 * equal user keys order by descending sequence). Works in both directions: on a change of direction every child is
 * repositioned around the current key (as LevelDB's MergingIterator). With n children a step costs O(log n) (a heap)
 * or O(n) for small n. Entries are never dropped here; dropping shadowed versions is the caller's job.
 *
 * level_iter: the concatenation of a sorted, non-overlapping run of table files (a level >= 1). It opens one file
 * at a time through the open callback, so iterating a level keeps one table open, and finds the file for a seek by
 * binary search on the files' largest keys.
 *
 * Both take ownership of what they are given and report a child's error through status().
 */
#ifndef KV_MERGE_H
#define KV_MERGE_H

#include <stddef.h>

#include "iter.h"
#include "version.h"

iter *merge_iter_new(iter **children, size_t n); /* takes the children (and frees the array's contents, not it) */

typedef iter *(*level_open_fn)(void *ctx, const file_meta *f);
/* files: nfiles entries sorted by smallest key; the array is copied, the file_meta are not (the caller keeps them
 * alive, e.g. by holding the version). */
iter *level_iter_new(file_meta *const *files, size_t nfiles, level_open_fn open, void *ctx);

#endif /* KV_MERGE_H */
