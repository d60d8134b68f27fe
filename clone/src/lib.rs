//! meshdrain-clone: post-copy clone engines (userspace and dm-clone) behind one `CloneBackend` trait.
