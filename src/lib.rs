//! attnopt
