"""Stand-in for Slicer's ``SampleData`` module (``Modules/Scripted/SampleData/SampleData.py``), as far
as an extension registering its samples relies on it.

Written for these tests from the module's documented interface (Slicer 5.x): sources live in
``slicer.modules.sampleDataSources`` ({category: [SampleDataSource]}) and category titles in
``slicer.modules.sampleDataSourceCategories``; ``SampleDataLogic.registerCustomSampleDataSource``
takes exactly the real keyword arguments (an unknown one is a TypeError, as in Python), builds a
:class:`SampleDataSource` with the real normalisation — one string or parallel lists, every list
as long as ``uris``, else ``ValueError`` — and skips a source whose text equals one already
registered in that category (Slicer compares sources by ``str()``). :func:`click` is what a
sample's button in the Sample Data panel does: ``customDownloader(source)`` where the source has
one, else ``SampleDataLogic().downloadFromSource(source)``.

Not modelled: downloading and loading files (``downloadFromSource`` and friends need the
network, the cache manager and the IO manager, none of which exist here), thumbnails, the panel's
layout. Calling them fails the test instead of pretending.
"""

import slicer


class SampleDataSource:
    def __init__(self, sampleName=None, sampleDescription=None, uris=None, fileNames=None, nodeNames=None,
                 checksums=None, loadFiles=None, customDownloader=None, thumbnailFileName=None,
                 loadFileTypes=None, loadFileProperties=None, loadFileType=None):
        if loadFileType is not None and loadFileTypes is not None:
            raise ValueError("loadFileType and loadFileTypes cannot be specified at the same time")
        if loadFileType is not None:
            loadFileTypes = loadFileType
        self.sampleName = sampleName
        self.sampleDescription = sampleName if sampleDescription is None else sampleDescription
        if isinstance(uris, (list, tuple)):
            n = len(uris)
            loadFileTypes = [loadFileTypes] * n if isinstance(loadFileTypes, str) or loadFileTypes is None \
                else loadFileTypes
            nodeNames = [None] * n if nodeNames is None else nodeNames
            loadFiles = [None] * n if loadFiles is None else loadFiles
            checksums = [None] * n if checksums is None else checksums
        elif isinstance(uris, str):
            uris, fileNames, nodeNames = [uris], [fileNames], [nodeNames]
            loadFiles, loadFileTypes, checksums = [loadFiles], [loadFileTypes], [checksums]
        self.uris = uris
        self.fileNames = fileNames
        self.nodeNames = nodeNames
        self.loadFiles = loadFiles
        self.customDownloader = customDownloader
        self.thumbnailFileName = thumbnailFileName
        self.loadFileTypes = loadFileTypes
        self.loadFileProperties = {} if loadFileProperties is None else loadFileProperties
        self.checksums = checksums
        # len(None) raises TypeError, as in Slicer when uris are missing
        if not len(uris) == len(fileNames) == len(nodeNames) == len(loadFiles) == len(loadFileTypes) == len(checksums):
            raise ValueError(f"All fields of sample data source must have the same length: uris {uris}, fileNames "
                             f"{fileNames}, nodeNames {nodeNames}, loadFiles {loadFiles}, loadFileTypes "
                             f"{loadFileTypes}, checksums {checksums}")

    def __eq__(self, other):
        return str(self) == str(other)

    def __str__(self):
        lines = [f"sampleName        : {self.sampleName}", f"sampleDescription : {self.sampleDescription}",
                 f"thumbnailFileName : {self.thumbnailFileName}", f"loadFileProperties: {self.loadFileProperties}",
                 f"customDownloader  : {self.customDownloader}", ""]
        for fields in zip(self.fileNames, self.uris, self.nodeNames, self.loadFiles, self.loadFileTypes,
                          self.checksums, strict=True):
            lines.extend(f" {label}: {value}" for label, value in
                         zip(("fileName", "uri", "nodeName", "loadFile", "loadFileType", "checksum"), fields))
            lines.append("")
        return "\n".join(lines)


def _sources():
    try:
        return slicer.modules.sampleDataSources
    except AttributeError:
        slicer.modules.sampleDataSources = {}
        return slicer.modules.sampleDataSources


class SampleDataLogic:
    @staticmethod
    def registerCustomSampleDataCategory(category, title):
        try:
            categories = slicer.modules.sampleDataSourceCategories
        except AttributeError:
            categories = slicer.modules.sampleDataSourceCategories = {}
        categories.setdefault(category, {})["title"] = title

    @staticmethod
    def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None, fileNames=None, nodeNames=None,
                                       customDownloader=None, thumbnailFileName=None, loadFileTypes=None,
                                       loadFiles=None, loadFileProperties={}, checksums=None, loadFileType=None):
        if loadFileType is not None and loadFileTypes is not None:
            raise ValueError("loadFileType and loadFileTypes cannot be specified at the same time")
        if loadFileType is not None:
            loadFileTypes = loadFileType
        sources = _sources()
        sources.setdefault(category, [])
        source = SampleDataSource(sampleName=sampleName, uris=uris, fileNames=fileNames, nodeNames=nodeNames,
                                  thumbnailFileName=thumbnailFileName, loadFileTypes=loadFileTypes,
                                  loadFiles=loadFiles, loadFileProperties=loadFileProperties, checksums=checksums,
                                  customDownloader=customDownloader)
        if SampleDataLogic.isSampleDataSourceRegistered(category, source):
            return
        sources[category].append(source)

    @staticmethod
    def categoryTitle(category):
        try:
            return slicer.modules.sampleDataSourceCategories.get(category, {}).get("title", category)
        except AttributeError:
            return category

    @staticmethod
    def sampleDataSourcesByCategory(category=None):
        sources = _sources()
        return sources if category is None else sources.get(category, [])

    @staticmethod
    def isSampleDataSourceRegistered(category, sampleDataSource):
        if not isinstance(sampleDataSource, SampleDataSource):
            raise TypeError(f"unsupported sampleDataSource type '{type(sampleDataSource)}'")
        return sampleDataSource in _sources().get(category, [])

    def __init__(self, logMessage=None):
        self.builtInCategoryName = "General"
        self.developmentCategoryName = "Development"

    def sourceForSampleName(self, sampleName):
        for sources in _sources().values():
            for source in sources:
                if source.sampleName == sampleName:
                    return source
        return None

    def categoryForSource(self, a_source):
        for category, sources in _sources().items():
            if a_source in sources:
                return category
        return None

    def downloadFromSource(self, source, maximumAttemptsCount=3, forceDownload=False):
        raise AssertionError("the SampleData stand-in does not download or load files (no network, cache manager or "
                             f"IO manager here); {source.sampleName} was to be fetched from {source.uris}")

    def downloadSamples(self, sampleName):
        source = self.sourceForSampleName(sampleName)
        return self.downloadFromSource(source) if source else []

    def downloadSample(self, sampleName):
        return self.downloadSamples(sampleName)[0]


def click(sampleName):
    """The user clicks the sample's button in the Sample Data panel (what its ``clicked()`` lambda runs)."""
    source = SampleDataLogic().sourceForSampleName(sampleName)
    if source is None:
        raise AssertionError(f"Sample Data has no sample {sampleName!r}; it has "
                             f"{[s.sampleName for v in _sources().values() for s in v]}")
    if source.customDownloader:
        return source.customDownloader(source)
    return SampleDataLogic().downloadFromSource(source)
