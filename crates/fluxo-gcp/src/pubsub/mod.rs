//! pubsub connector (in progress).
